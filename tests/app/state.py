"""What a rejected request must leave unchanged, in one comparable value."""

from __future__ import annotations

from app.services import Services


def snapshot(services: Services) -> tuple[object, ...]:
    kb = services.kb()
    documents = sorted((d.id, d.collection, d.content_hash) for d in kb.list_documents())
    conversations = sorted(
        (c.id, c.collection, len(services.conversations.get(c.id).messages))
        for c in services.conversations.list_conversations()
    )
    keys = [(k.id, k.revoked_at) for k in services.keys.list_keys()]
    collections = [(c.name, c.version) for c in kb.list_collections()]
    return documents, conversations, keys, collections
