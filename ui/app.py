"""Archivist chat page: conversations per collection (kept by the API, so they survive reloads; the open
one is in the URL as `?c=<id>`), answers streamed token by token, numbered citations that open to the
passage with the supporting span highlighted, uploads with job progress, and retrieval settings."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterator
from typing import Any

import streamlit as st

from ui.client import ApiError, ArchivistClient

st.set_page_config(page_title="Archivist", page_icon="📚")
MODES = ["hybrid", "dense", "lexical"]


@st.cache_resource
def get_client(base_url: str | None, api_key: str | None) -> ArchivistClient:
    return ArchivistClient(base_url, api_key)


# Plain bold text: an emoji mark renders as an empty box where the browser has no emoji font.
CITED = "**cited**"


def highlighted(source: dict[str, Any]) -> str:
    """The passage as HTML-escaped markdown, the span that supports the answer marked."""
    text, span = source["text"], source.get("highlight")
    if not span:
        return html.escape(text)
    start, end = span["start"], span["end"]
    return f"{html.escape(text[:start])}<mark>{html.escape(text[start:end])}</mark>{html.escape(text[end:])}"


def show_sources(reply: dict[str, Any]) -> None:
    cited = set(reply.get("cited", []))
    for source in sorted(reply.get("sources", []), key=lambda s: (s["n"] not in cited, s["n"])):
        mark = CITED if source["n"] in cited else "not cited"
        label = f"[{source['n']}] {source['title']} · chunk {source['ordinal']} · {mark}"
        label += f" · score {source['score']:.3f}"
        with st.expander(label):
            st.markdown(highlighted(source), unsafe_allow_html=True)


def show_reply(reply: dict[str, Any]) -> None:
    if not reply.get("grounded", True):
        st.caption("Not found in the documents of this collection.")
    show_sources(reply)


def show_history(conversation: dict[str, Any]) -> None:
    for message in conversation["messages"]:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
            if message.get("reply"):
                show_reply(message["reply"])


def ask(client: ArchivistClient, question: str, options: dict[str, Any]) -> None:
    """Stream the answer into the page as it is generated, then show its sources."""
    done: dict[str, Any] = {}

    def text() -> Iterator[str]:
        for event, data in client.ask(question, **options):
            if event == "delta":
                yield data["text"]
            elif event == "done":
                done.update(data)

    with st.chat_message("assistant"):
        placeholder = st.empty()
        with placeholder.container():
            streamed = st.write_stream(text())
        if done and (not done["grounded"] or not str(streamed).strip()):
            placeholder.markdown(done["answer"])  # the streamed text was not backed by the documents
        if done:
            show_reply(done)


def upload(client: ArchivistClient, collection: str, files: list[Any]) -> None:
    job = client.upload(collection, [(f.name, f.getvalue()) for f in files])
    progress = st.progress(0.0, text=f"ingesting {len(files)} file(s) into {collection}…")
    while job["state"] in ("queued", "running"):
        time.sleep(0.5)
        job = client.job(job["id"])
        done = job["files_done"] / max(job["files_total"], 1)
        progress.progress(done, text=f"{job['files_done']} of {job['files_total']} files, {job['state']}")
    progress.progress(1.0, text=f"job {job['state']}: {job['chunks_written']} chunks written")
    for result in job["results"]:
        line = f"{result['path']}: {result['status']}"
        if result["reason"]:
            line += f" — {result['reason']}"
        if result["status"] in ("failed", "skipped"):
            st.warning(line)
        else:
            st.write(line)
    if job["error"]:
        st.error(job["error"])


# Keyed by address and key: one client per API the page is pointed at.
client = get_client(os.environ.get("ARCHIVIST_API_URL"), os.environ.get("ARCHIVIST_API_KEY"))
st.title("📚 Archivist")

try:
    collections = [c["name"] for c in client.collections()]
except ApiError as error:
    st.error(str(error))
    collections = []

conversation: dict[str, Any] | None = None
if (conversation_id := st.query_params.get("c")) and collections:
    try:
        conversation = client.conversation(conversation_id)
    except ApiError as error:
        st.error(f"conversation {conversation_id} could not be opened: {error}")
        del st.query_params["c"]

with st.sidebar:
    current = conversation["collection"] if conversation else None
    index = collections.index(current) if current in collections else 0
    collection = st.selectbox("Collection", collections, index=index if collections else None)
    with st.expander("Settings"):
        top_k = st.slider("Passages (top-k)", 1, 20, 5)
        mode = st.selectbox("Retrieval", MODES)
        temperature = st.slider("Temperature", 0.0, 1.5, 0.0, 0.1)
    if conversation and collection != conversation["collection"]:
        conversation = None
        del st.query_params["c"]
    if st.button("New conversation", disabled=not collection):
        conversation = None
        st.query_params.clear()
    if collection:
        st.subheader("Conversations")
        try:
            for listed in client.conversations(collection):
                chosen = conversation is not None and listed["id"] == conversation["id"]
                title = ("▶ " if chosen else "") + (listed["title"] or "untitled")
                if st.button(title, key=f"conversation-{listed['id']}"):
                    st.query_params["c"] = listed["id"]
                    st.rerun()
        except ApiError as error:
            st.error(str(error))
    st.subheader("Add documents")
    target = st.text_input("Into collection", value=collection or "default")
    files = st.file_uploader("Files", accept_multiple_files=True)
    if st.button("Upload", disabled=not files):
        try:
            upload(client, target, list(files or []))
        except ApiError as error:
            st.error(str(error))

if conversation:
    show_history(conversation)

if question := st.chat_input("Ask a question about your documents", disabled=not collection):
    with st.chat_message("user"):
        st.markdown(question)
    started = conversation is None
    try:
        if conversation is None:
            assert collection is not None
            conversation = client.create_conversation(collection)
            st.query_params["c"] = conversation["id"]
        options = {
            "conversation_id": conversation["id"],
            "top_k": top_k,
            "mode": mode,
            "temperature": temperature,
        }
        ask(client, question, options)
    except ApiError as error:
        st.error(str(error))
    else:
        if started:
            st.rerun()  # list the new conversation in the sidebar, titled by its first question
