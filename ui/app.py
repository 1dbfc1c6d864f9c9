"""Archivist chat page: ask questions about a collection and see the numbered, cited sources."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui.client import ApiError, ArchivistClient

st.set_page_config(page_title="Archivist", page_icon="📚")


@st.cache_resource
def get_client() -> ArchivistClient:
    return ArchivistClient()


def show_sources(sources: list[dict[str, Any]], cited: list[int]) -> None:
    for source in sources:
        mark = "✅ cited" if source["n"] in cited else "not cited"
        label = f"[{source['n']}] {source['title']} · chunk {source['ordinal']} · {mark}"
        label += f" · score {source['score']:.3f}"
        with st.expander(label):
            st.markdown(source["text"])


def show_message(message: dict[str, Any]) -> None:
    with st.chat_message(message["role"]):
        st.markdown(message["content"])
        if message.get("sources"):
            show_sources(message["sources"], message.get("cited", []))


client = get_client()
st.title("📚 Archivist")

try:
    collections = [c["name"] for c in client.collections()]
except ApiError as error:
    st.error(str(error))
    collections = []

with st.sidebar:
    collection = st.selectbox("Collection", collections, index=0 if collections else None)
    if st.button("Clear chat"):
        st.session_state.messages = []

if "messages" not in st.session_state:
    st.session_state.messages = []
for past in st.session_state.messages:
    show_message(past)

if question := st.chat_input("Ask a question about your documents"):
    st.session_state.messages.append({"role": "user", "content": question})
    show_message(st.session_state.messages[-1])
    try:
        with st.spinner("Searching and answering…"):
            reply = client.query(question, collection)
        answer = {
            "role": "assistant",
            "content": reply["answer"] or "_(empty answer)_",
            "sources": reply["sources"],
            "cited": reply["cited"],
        }
        st.session_state.messages.append(answer)
        show_message(answer)
    except ApiError as error:
        st.error(str(error))
