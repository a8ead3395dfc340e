"""The running-daemon helper the daemon-level tests share: the real Daemon in the test's
event loop, started on entry (ready, or the test fails saying so), stopped on exit.

    async with RunningDaemon(config_path, clock=clock) as daemon:
        ...   # daemon.store, daemon.context, daemon.http_port

`config` is a Config, a path to a YAML file, or YAML text; `builders` replaces the daemon's
components (a test that runs only the pollers, or a source of its own). On a clean exit the
daemon must stop within `stop_timeout` and return 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from energyd.clock import Clock
from energyd.config.loader import load_config, parse_config
from energyd.config.schema import Config
from energyd.daemon.app import Daemon


class RunningDaemon:
    def __init__(self, config: Config | Path | str, *, clock: Clock | None = None,
                 builders: Sequence[Callable[..., Any]] | None = None,
                 start_timeout: float = 10.0, stop_timeout: float = 15.0):
        kwargs: dict[str, Any] = {"clock": clock}
        if builders is not None:
            kwargs["builders"] = list(builders)
        if isinstance(config, Path):
            kwargs["config_path"] = config
            config = load_config(config)
        elif isinstance(config, str):
            config = parse_config(config, "test.yaml")
        self.daemon = Daemon(config, **kwargs)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.task: asyncio.Task[int] | None = None
        self.exit_code: int | None = None

    async def __aenter__(self) -> Daemon:
        self.task = asyncio.create_task(self.daemon.run(handle_signals=False),
                                        name="test.daemon")
        ready = asyncio.create_task(self.daemon.ready.wait())
        await asyncio.wait({ready, self.task}, timeout=self.start_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if not self.daemon.ready.is_set():
            ready.cancel()
            if self.task.done():
                self.task.result()  # raises what stopped it
            self.task.cancel()
            raise AssertionError(f"the daemon was not ready within {self.start_timeout} s")
        return self.daemon

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.daemon.stop()
        assert self.task is not None
        self.exit_code = await asyncio.wait_for(self.task, self.stop_timeout)
        if exc_type is None:
            assert self.exit_code == 0, f"the daemon stopped with {self.exit_code}"
