"""Archivist chat page: conversations per collection (kept by the API, so they survive reloads; the open
one is in the URL as `?c=<id>`), answers streamed token by token, numbered citations (with page and
section) that open to the passage with the supporting span highlighted and can show it in its document,
with the original file to download; uploads with job progress, and retrieval settings."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterator
from typing import Any

import streamlit as st

from ui.client import ApiError, ArchivistClient
from ui.marking import highlighted

st.set_page_config(page_title="Archivist", page_icon="📚")
MODES = ["hybrid", "dense", "lexical"]


@st.cache_resource
def get_client(base_url: str | None, api_key: str | None) -> ArchivistClient:
    return ArchivistClient(base_url, api_key)


# Plain bold text: an emoji mark renders as an empty box where the browser has no emoji font.
CITED = "**cited**"


# Characters Markdown reads as inline formatting (and `$` as math), written as HTML entities so that
# document text shows as it is; line breaks become <br>.
MARKDOWN_SPECIALS = str.maketrans({c: f"&#{ord(c)};" for c in "\\`*_[]~$"})
CONTEXT_CHARS = 20_000  # of a long document, the view shows this much on each side of the passage


def as_html(text: str) -> str:
    """Plain text for `st.markdown(..., unsafe_allow_html=True)`: escaped, line breaks kept."""
    return html.escape(text).translate(MARKDOWN_SPECIALS).replace("\n", "<br>")


def where(source: dict[str, Any]) -> str:
    """Where a passage sits in its document: its page (PDF) and its section's headings."""
    parts = []
    if source.get("page"):
        parts.append(f"p. {source['page']}")
    if source.get("heading_path") and source["heading_path"] != source["title"]:
        parts.append(source["heading_path"])
    return " · ".join(parts)


def show_in_document(client: ArchivistClient, source: dict[str, Any], key: str) -> None:
    """The cited passage marked in its document's text, and the original file to download."""
    try:
        document = client.document_text(source["document_id"])
        original = client.document_file(source["document_id"])
    except ApiError as error:
        st.error(str(error))
        return
    text, start, end = document["text"], source["char_start"], source["char_end"]
    first, last = max(0, start - CONTEXT_CHARS), min(len(text), end + CONTEXT_CHARS)
    before = ("…" if first else "") + text[first:start]
    after = text[end:last] + ("…" if last < len(text) else "")
    # One line inside a <div>: Markdown reads it as an HTML block and leaves it alone.
    marked = f"<div>{as_html(before)}<mark>{as_html(text[start:end])}</mark>{as_html(after)}</div>"
    with st.container(height=360):
        st.markdown(marked, unsafe_allow_html=True)
    if original is None:
        st.caption("The original file is no longer kept, or has changed since it was ingested.")
    else:
        name, content = original
        st.download_button(f"Download {name}", content, file_name=name, key=f"file-{key}")


def show_sources(client: ArchivistClient, reply: dict[str, Any], key: str) -> None:
    cited = set(reply.get("cited", []))
    for source in sorted(reply.get("sources", []), key=lambda s: (s["n"] not in cited, s["n"])):
        mark = CITED if source["n"] in cited else "not cited"
        place = where(source)
        label = f"[{source['n']}] {source['title']}" + (f" · {place}" if place else "")
        label += f" · chunk {source['ordinal']} · {mark} · score {source['score']:.3f}"
        with st.expander(label):
            st.markdown(highlighted(source), unsafe_allow_html=True)
            where_key = f"{key}-{source['n']}"
            if st.toggle("Show in the document", key=f"document-{where_key}"):
                show_in_document(client, source, where_key)


# Why the reply is that the documents lack the answer, by the reply's `refusal`.
REFUSALS = {
    "relevance": "No passage of this collection is close enough to the question; the model was not asked.",
    "model": "The model found no answer in the passages below.",
    "unsupported": "The model's answer is not backed by the passages below, so it is not shown.",
    "degenerate": "The model's reply was empty or repeated itself, so it is not shown.",
}


def show_reply(client: ArchivistClient, reply: dict[str, Any], key: str) -> None:
    if not reply.get("grounded", True):
        st.caption(REFUSALS.get(reply.get("refusal") or "", "Not found in the documents of this collection."))
    show_sources(client, reply, key)


def show_history(client: ArchivistClient, conversation: dict[str, Any]) -> None:
    for message in conversation["messages"]:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
            if message.get("reply"):
                show_reply(client, message["reply"], str(message["id"]))


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
            show_reply(client, done, "latest")


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
    show_history(client, conversation)

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
