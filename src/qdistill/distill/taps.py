"""Feature taps: read intermediate tensors by module name with forward hooks (no rewritten forwards)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn

from qdistill.errors import ConfigError

__all__ = ["FeatureTaps"]


def _store(store: dict[str, Tensor], key: str, use_input: bool, module: nn.Module, args: tuple, output) -> None:
    # Module-level function (not a closure) so hooked models still pickle.
    store[key] = args[0] if use_input else output


class FeatureTaps:
    """Record the input or output of named modules on every forward.

    ``"layer3"`` taps the output of ``model.layer3``; ``"layer3.1.conv2:input"`` its input.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> taps = FeatureTaps(net, ["0", "1:input"])
        >>> _ = net(__import__("torch").ones(1, 2)); sorted(taps.pop())
        ['0', '1:input']
        >>> taps.close()
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.names = list(names)
        self._store: dict[str, Tensor] = {}
        self._handles = []
        for key in self.names:
            name, _, where = key.partition(":")
            if where not in ("", "input", "output"):
                raise ConfigError(f"tap {key!r}: suffix must be ':input' or ':output'")
            if name not in modules:
                raise ConfigError(f"tap {key!r}: no module named {name!r} in {type(model).__name__}")
            hook = partial(_store, self._store, key, where == "input")
            self._handles.append(modules[name].register_forward_hook(hook))

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward, in tap order; clears them."""
        missing = [k for k in self.names if k not in self._store]
        if missing:
            raise RuntimeError(f"taps {missing} were not reached in the last forward pass")
        out = {k: self._store[k] for k in self.names}
        self._store.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._store.clear()
