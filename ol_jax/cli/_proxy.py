"""``ol-jax proxy``: a local Anthropic Messages API endpoint that learns.

``POST /v1/messages`` accepts the Anthropic Messages API request (``model``,
``max_tokens``, ``messages``, optional ``system``, ``stop_sequences``,
``temperature``, ``top_p``, ``top_k``, ``stream``), so any Anthropic client works
with ``base_url`` pointed here. The query is the text of the last user message. A
:class:`~ol_jax.learners.TeacherProxyLearner` answers it locally or forwards it to
the teacher (an :class:`~ol_jax.feedback.AnthropicTeacher` on the configured
upstream, or the offline :class:`~ol_jax.feedback.SimulatedTeacher` by default),
the reply goes out in the Messages API shape (or as its server-sent events), and
the learner learns from the decision. Usage is counted in the generator's
tokens; an answer is cut at the first stop sequence and after ``max_tokens``
tokens (the learner still learns from all of it). ``POST
/v1/messages/count_tokens`` counts a request's input tokens and ``GET
/v1/models`` lists the accepted model names.

A failed teacher answer is sent to the client as an Anthropic error (``502
api_error`` naming the upstream's status and error type, never its body, or
``504 timeout_error``) and nothing is learned. Bad input (invalid or too deeply
nested JSON, a body over the size limit, missing or mistyped fields, text that
is not valid Unicode, an empty query, a model name the config does not accept,
``max_tokens`` over the config's limit, fields the proxy cannot honour such as
``tools``) is answered ``400 invalid_request_error`` (``413`` for a body too
large) with a message naming the field, before the learner sees it. With client
keys configured (``proxy.api_keys`` or ``$OL_JAX_PROXY_API_KEYS``), a request
without one of them is ``401 authentication_error``. The server itself
(:mod:`ol_jax.cli._proxy_server`) has header, body and idle timeouts and a
connection limit.

The learner's run folder ``<root>/<network_id>/runs/<run_id>/`` (a
:class:`~ol_jax.store.RunStore` run) holds its ``decisions.jsonl`` (one JSON line
per answered query: route, reason, similarity, latencies, cost saved) and
``learner/``, the learner saved every ``save_every`` answered requests and on
shutdown (written beside the previous save, then swapped in); starting again with
the same ``--run-id`` resumes from it. ``GET /stats`` returns the learner's
statistics and the server's counters (requests, answers by route, bad requests,
refused keys, timeouts, upstream and internal errors, updates, saves, the last
error).

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_ and
  `Errors <https://docs.anthropic.com/en/api/errors>`_.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import textwrap
import urllib.parse
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, field_validator

from ol_jax.cli._proxy_api import MAX_BODY_BYTES, MAX_JSON_DEPTH
from ol_jax.cli._proxy_server import LEARNER_DIR, ProxyLimits, ProxyServer
from ol_jax.feedback import DEFAULT_ANTHROPIC_MODEL
from ol_jax.learners import TeacherProxyConfig
from ol_jax.store import (
    Capacity,
    Chars,
    ConfigSection,
    Count,
    Seed,
    load_config,
    validate_config,
)

__all__ = [
    "API_KEYS_ENV",
    "ProxyNetworkConfig",
    "ProxySection",
    "build_proxy",
    "proxy_main",
]

#: Client keys (comma-separated) accepted besides ``proxy.api_keys``.
API_KEYS_ENV = "OL_JAX_PROXY_API_KEYS"


def saved_learner_path(run_dir: str | os.PathLike[str]) -> str | None:
    """The learner saved in ``run_dir`` (or the one a crashed swap left), if any."""
    base = os.path.join(os.fspath(run_dir), LEARNER_DIR)
    for path in (base, base + ".old"):
        if os.path.exists(path):
            return path
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _domain_help() -> str:
    from ol_jax.feedback import describe_domain, faq_domain

    defaults = ProxySection()
    domain = faq_domain(
        defaults.simulated_families,
        paraphrases=defaults.simulated_paraphrases,
        seed=defaults.simulated_seed,
    )
    intro = (
        "The offline simulated teacher (no --upstream) answers a help desk FAQ; "
        "a question is matched by meaning (all-MiniLM-L6-v2, cosine >= "
        f"{defaults.simulated_threshold:g}), anything else gets its fallback "
        "answer. With the default proxy.simulated_* settings its question families "
        f"are ({len(domain)}, one example question each):"
    )
    return textwrap.fill(intro, width=79) + "\n" + describe_domain(domain)


def _parser() -> argparse.ArgumentParser:
    from ol_jax.cli._help import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="ol-jax proxy",
        description=textwrap.fill(
            "A local Anthropic Messages API endpoint (POST /v1/messages, streaming "
            "included; POST /v1/messages/count_tokens; GET /v1/models) that answers "
            "locally or forwards to a teacher, and learns from every teacher answer. "
            "GET /stats returns the learner's statistics. Client keys, when set "
            f"(proxy.api_keys or ${API_KEYS_ENV}), are checked against x-api-key.",
            width=79,
        ),
        epilog=_domain_help(),
        formatter_class=type(
            "ProxyHelp", (HelpFormatter, argparse.RawDescriptionHelpFormatter), {}
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to listen on (0: any free port)"
    )
    parser.add_argument("--root", default="networks", help="networks folder")
    parser.add_argument(
        "--config",
        default=None,
        help="network config YAML (network_id, proxy and learner sections); "
        "default: <root>/<network>/config.yaml if it exists, else built-in defaults",
    )
    parser.add_argument(
        "--network", default="teacher-proxy", help="network id when no --config"
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="run to resume (its saved learner is loaded) or to create; default: "
        "a new run",
    )
    parser.add_argument(
        "--upstream",
        default=None,
        help="base URL of the Anthropic API the teacher is asked through (key from "
        "ANTHROPIC_API_KEY), e.g. https://api.anthropic.com; 'simulated' for the "
        "offline FAQ teacher; default: the config's proxy.upstream",
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="answered requests between saves (default: the config's)",
    )
    return parser


class ProxySection(ConfigSection):
    """The ``proxy`` section of the network config: the server and its teacher.

    Attributes:
      models: the model names clients may request; any other is a 400.
      upstream: base URL of the Anthropic API the teacher is asked through (key
        from ``ANTHROPIC_API_KEY``): ``https://``, or ``http://`` to a loopback
        host only (the key would cross the network in the clear); ``None`` for
        the offline simulated FAQ teacher.
      teacher_model: the Claude model the upstream teacher is asked with.
      teacher_max_tokens: answer length limit of the upstream teacher.
      upstream_timeout_s: seconds before an upstream request is a 504.
      upstream_max_retries: the SDK's retries on connection errors, 429 and 5xx.
      save_every: answered requests between saves of the learner.
      api_keys: client keys; when any (here or in ``$OL_JAX_PROXY_API_KEYS``),
        every request must send one in ``x-api-key``.
      max_body_bytes: the largest request body accepted.
      max_json_depth: the deepest JSON nesting of a request body.
      max_tokens_limit: the largest ``max_tokens`` a request may ask for.
      header_timeout_s: seconds a request's headers may take to arrive.
      body_timeout_s: seconds a request's body may take to arrive.
      idle_timeout_s: seconds a kept-alive connection may wait for a request.
      max_connections: open connections at most.
      simulated_encoder: the sentence encoder (``ol_jax.models.load_encoder``
        alias or folder) the simulated teacher matches questions by meaning
        with; ``None`` for normalized text only.
      simulated_threshold: the least cosine similarity of a match by meaning.
      simulated_families: question families of the simulated FAQ teacher.
      simulated_paraphrases: paraphrases per family.
      simulated_seed: seed of the generated FAQ domain.
    """

    models: tuple[str, ...] = Field(
        default=("ol-jax", DEFAULT_ANTHROPIC_MODEL), min_length=1
    )
    upstream: str | None = None
    teacher_model: str = Field(default=DEFAULT_ANTHROPIC_MODEL, min_length=1)
    # The upstream's answer limit, not a local shape (answers are cut to the
    # generator's max_new_tokens for training).
    teacher_max_tokens: Annotated[Count, Field(le=1 << 20)] = Field(default=512, ge=1)
    upstream_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # Each retry waits longer (the SDK backs off exponentially).
    upstream_max_retries: Annotated[Count, Field(le=10)] = Field(default=2, ge=0)
    save_every: Count = Field(default=100, ge=1)
    api_keys: tuple[str, ...] = ()
    max_body_bytes: Chars = Field(default=MAX_BODY_BYTES, ge=1)
    max_json_depth: Annotated[Count, Field(le=500)] = Field(
        default=MAX_JSON_DEPTH, ge=4
    )
    max_tokens_limit: Annotated[Count, Field(le=1 << 20)] = Field(default=65536, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    idle_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    # Each open connection holds a socket and a little memory.
    max_connections: Annotated[Capacity, Field(le=100_000)] = Field(default=1000, ge=1)
    simulated_encoder: str | None = "all-minilm-l6-v2"
    simulated_threshold: float = Field(default=0.6, ge=-1, le=1)
    simulated_families: Capacity = Field(default=60, ge=1)
    simulated_paraphrases: Capacity = Field(default=4, ge=1)
    simulated_seed: Seed = 0

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL with a host, got {url!r}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                f"must be https:// unless the host is loopback (the API key would "
                f"travel unencrypted), got {url!r}"
            )
        return url

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(not key.strip() for key in keys):
            raise ValueError("every key must be a non-empty string")
        return keys

    def limits(self) -> ProxyLimits:
        """The server's :class:`~ol_jax.cli._proxy_server.ProxyLimits`."""
        return ProxyLimits(
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            max_connections=self.max_connections,
            max_body_bytes=self.max_body_bytes,
            max_json_depth=self.max_json_depth,
            max_tokens=self.max_tokens_limit,
        )

    def client_keys(self) -> tuple[str, ...]:
        """``api_keys`` and the keys in ``$OL_JAX_PROXY_API_KEYS``."""
        extra = os.environ.get(API_KEYS_ENV, "")
        return self.api_keys + tuple(k.strip() for k in extra.split(",") if k.strip())


class ProxyNetworkConfig(TeacherProxyConfig):
    """A :class:`~ol_jax.learners.TeacherProxyConfig` with a ``proxy`` section.

    Attributes:
      proxy: the server and teacher settings (see :class:`ProxySection`).
    """

    proxy: ProxySection = Field(default_factory=ProxySection)

    def learner_config(self) -> TeacherProxyConfig:
        """The learner's part of the config (everything but ``proxy``)."""
        return TeacherProxyConfig.model_validate(self.model_dump(exclude={"proxy"}))


def _load_proxy_config(args: argparse.Namespace) -> Any:
    """The validated config: ``--config``, else the network's, else defaults."""
    path = args.config
    if path is None:
        candidate = os.path.join(args.root, args.network, "config.yaml")
        path = candidate if os.path.isfile(candidate) else None
    if path is not None:
        data = load_config(path, ProxyNetworkConfig).model_dump()
    else:
        data = {"network_id": args.network}
    overrides = {}
    if args.upstream is not None:
        overrides["upstream"] = None if args.upstream == "simulated" else args.upstream
    if args.save_every is not None:
        overrides["save_every"] = args.save_every
    data["proxy"] = {**data.get("proxy", {}), **overrides}
    return validate_config(data, ProxyNetworkConfig, source=path or "command line")


def build_proxy(args: argparse.Namespace) -> ProxyServer:
    """The server ``ol-jax proxy`` runs: config, teacher, learner (resumed or new).

    The learner of run ``--run-id`` is loaded from ``<run_dir>/learner`` when one
    was saved there; otherwise a new learner is built from the config. Its
    programs are compiled (:meth:`~ol_jax.learners.TeacherProxyLearner.warmup`)
    before the socket is bound.

    Args:
      args: parsed ``ol-jax proxy`` arguments.

    Returns:
      The :class:`ProxyServer` (not yet serving); its ``learner`` must be closed
      after the server.
    """
    from ol_jax.learners import TeacherProxyLearner
    from ol_jax.store import RunStore, new_run_id

    config = _load_proxy_config(args)
    proxy = config.proxy
    learner_config = config.learner_config()
    run_id = args.run_id or new_run_id()
    with RunStore(args.root, config=learner_config) as store:
        runs_dir = store.runs_dir
    saved = saved_learner_path(os.path.join(runs_dir, run_id))
    if saved is not None:
        learner = TeacherProxyLearner.load(saved, root=args.root, run_id=run_id)
    else:
        learner = TeacherProxyLearner(learner_config, root=args.root, run_id=run_id)
    try:
        teacher = _teacher(proxy, learner)
        # Every shape answers and updates use is compiled before the port opens.
        learner.warmup()
        return ProxyServer(
            learner,
            teacher,
            models=proxy.models,
            run_dir=learner.run_dir,
            save_every=proxy.save_every,
            host=args.host,
            port=args.port,
            limits=proxy.limits(),
            api_keys=proxy.client_keys(),
        )
    except BaseException:
        learner.close()
        raise


def _teacher(proxy: ProxySection, learner: Any) -> Any:
    """The configured teacher: the upstream API, or the simulated FAQ one."""
    from ol_jax.feedback import AnthropicTeacher, SimulatedTeacher, faq_domain

    if proxy.upstream is None:
        encoder = None
        if proxy.simulated_encoder == learner.config.encoder.name:
            encoder = learner.encoder  # the same frozen model: load it once
        elif proxy.simulated_encoder is not None:
            from ol_jax.models import load_encoder

            encoder = load_encoder(proxy.simulated_encoder)
        return SimulatedTeacher(
            faq_domain(
                proxy.simulated_families,
                paraphrases=proxy.simulated_paraphrases,
                seed=proxy.simulated_seed,
            ),
            encoder=encoder,
            threshold=proxy.simulated_threshold,
        )
    return AnthropicTeacher(
        proxy.teacher_model,
        base_url=proxy.upstream,
        timeout=proxy.upstream_timeout_s,
        max_retries=proxy.upstream_max_retries,
        max_tokens=proxy.teacher_max_tokens,
    )


def proxy_main(argv: Sequence[str] | None = None) -> int:
    """Runs ``ol-jax proxy`` until SIGINT or SIGTERM; saves the learner on the way out.

    Args:
      argv: command-line arguments after ``proxy`` (see ``--help``).

    Returns:
      The exit status.
    """
    import signal

    args = _parser().parse_args(argv)
    from ol_jax.core import enable_compilation_cache

    enable_compilation_cache()
    server = build_proxy(args)

    def stop(signum: int, frame: Any) -> None:
        del signum, frame
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        print(
            f"ol-jax proxy: serving {server.url} (POST /v1/messages, GET /stats); "
            f"run folder {server.run_dir}",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            server.close()
        finally:
            server.learner.close()
        print("ol-jax proxy: stopped; learner saved", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(proxy_main())
