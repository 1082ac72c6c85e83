"""Whether the Hugging Face hub can be asked at all: offline, a hub id is looked up in the local cache at once
instead of after the hub client's retries (some 25 s of them for a name that is not cached)."""

from __future__ import annotations

from contextlib import contextmanager


def unreachable_hub() -> str | None:
    """The hub's host name where it cannot even be resolved from here (offline), else None (reachable, or offline
    mode set, which transformers honours itself)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    if constants.HF_HUB_OFFLINE or not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


def hub_kwargs() -> dict:
    """``from_pretrained`` keywords for a hub id: the local cache only where the hub cannot be reached."""
    return {"local_files_only": True} if unreachable_hub() else {}


@contextmanager
def offline_datasets():
    """Within: where the hub's host cannot be resolved, `datasets` in offline mode (it reads ``HF_HUB_OFFLINE`` when
    imported, so the environment cannot say it later), so that a hub data set comes from its local cache at once.
    Yields that host, else None."""
    import datasets.config

    host = unreachable_hub()
    was = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = was or bool(host)
    try:
        yield host
    finally:
        datasets.config.HF_HUB_OFFLINE = was
