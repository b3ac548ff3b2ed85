"""The Flower ClientApp: one user's phone (partition = user; sharded runs map it, see
`RunConfig.user_of`). `make_client_app(overrides)` serves
in-process runs, whose run config Flower leaves empty."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from chord_fl.errors import ChordError
from chord_fl.federation.runconfig import RunConfig
from simulations.client import answer, device_runtime
from strategies import protocol


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    app = ClientApp()

    def config_of(context: Context) -> RunConfig:
        return _parsed(tuple(sorted({**context.run_config, **(overrides or {})}.items())))

    def user_of(context: Context) -> int:
        return config_of(context).user_of(int(context.node_config[protocol.PARTITION]))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(protocol.partition_content(user_of(context)), reply_to=msg)

    def respond(msg: Message, context: Context) -> Message:
        try:
            runtime = device_runtime(config_of(context))
            content = answer(runtime, msg.content, user_of(context), context.state)
        except ChordError as exc:  # a reasoned refusal; any other exception is a crash
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)), reply_to=msg)
        return Message(content, reply_to=msg)

    app.train()(respond)
    app.evaluate()(respond)
    return app


@functools.lru_cache(maxsize=4)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    """The run config, parsed once per worker process rather than once per message."""
    return RunConfig.from_mapping(dict(items))


app = make_client_app()
