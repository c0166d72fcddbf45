"""Whether W&B runs online here, decided without network calls (kept light: ``mixerlab
dashboard`` asks too, without importing torch or Lightning)."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse


def wandb_mode(configured: str) -> str:
    """The W&B mode to run in: ``WANDB_MODE`` wins, then the config; ``auto`` means online only
    when credentials exist (``WANDB_API_KEY`` or a netrc entry), checked without network calls."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        found = False
    return "online" if found else "offline"
