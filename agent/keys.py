"""The key table: which shared keys open this agent, and what each may do.

A table is built whole from the configuration (and `--key-file` extras) by
`KeyTable.load`, so a reload that fails on one key file keeps the old table.
"""

from __future__ import annotations

from shoal.protocol.connection import KeyLookup
from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey

from shoal.agent.config import AgentConfig, KeyPolicy, is_loopback, parse_connect, parse_listen
from shoal.agent.strictmodes import check_path
from shoal.hostio.keyfile import load_key_file

__all__ = ["KeyTable", "check_exposure"]


class KeyTable(KeyLookup):
    """The agent's keys by id, each with its policy (None: unrestricted)."""

    def __init__(self, keys: list[SharedKey], policies: dict[str, KeyPolicy | None]) -> None:
        super().__init__(keys)
        self._policies = policies

    @classmethod
    def load(cls, config: AgentConfig, extra: list[SharedKey]) -> KeyTable:
        """Read the config's key files, add `extra` with full rights, refuse an unkeyed exposed agent."""
        policies: dict[str, KeyPolicy | None] = {}
        keys: list[SharedKey] = []
        for policy in config.keys:
            check_path(policy.file, "key file")
            key = load_key_file(policy.file)
            keys.append(key)
            policies[key.key_id] = policy
        for key in extra:
            keys.append(key)
            policies.setdefault(key.key_id, None)
        check_exposure(config, keyed=bool(keys))
        return cls(keys, policies)

    def accepts(self, key_id: str | None) -> bool:
        """Whether a connection authenticated with `key_id` (None: no key) is still welcome."""
        return key_id in self._policies if key_id else not self.required

    def policy_for(self, key_id: str | None) -> KeyPolicy | None:
        """The policy of an authenticated key; None means unrestricted."""
        return self._policies.get(key_id) if key_id else None


def check_exposure(config: AgentConfig, keyed: bool) -> None:
    """Refuse non-loopback TCP listeners, or hubs to dial, when no key guards them (unless --insecure)."""
    # The shared key is the authentication the issue asks for; TLS alone (even
    # mutual) does not unlock non-loopback addresses, --insecure does, loudly.
    if keyed or config.insecure:
        return
    for text in config.listen:
        addr = parse_listen(text)
        if addr.kind == "tcp" and not is_loopback(addr.host or ""):
            raise ConfigError(
                f"refusing to listen on {text} without a key: anyone who can reach it could run "
                "commands; configure a key (--key-file) or pass --insecure", "listen")
    for text in config.connect:
        host, _ = parse_connect(text)
        if not is_loopback(host):
            raise ConfigError(
                f"refusing to connect to hub {text} without a key: whoever answers there could run "
                "commands; configure a key (--key-file) or pass --insecure", "connect")
