"""What every job shares: its log lines, strict JSON, where its config goes."""

from mqt.configtree import save_config
from mqt.console import log, strict_json

__all__ = ["log", "save_config", "strict_json"]
