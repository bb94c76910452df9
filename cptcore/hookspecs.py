"""Every hook a cptcore plugin can implement.

Two kinds (see docs/plugins.md):

* **Registration hooks** (``cpt_register_*``) take no arguments and return a list of
  frozen spec objects (:mod:`cptcore.specs`). All implementations are called; the core
  builds a :class:`cptcore.registry.Registry` from the results, so a duplicate name is an
  error naming both plugins and an unknown name gets a did-you-mean. ``None`` or ``[]``
  means "nothing to register".
* **Provider hooks** (``cpt_build_model``, ``cpt_tokenize_fn``, ``cpt_save``) are
  ``firstresult``: the first non-``None`` result wins. The built-in default is marked
  ``trylast=True``, so any third-party implementation runs first; returning ``None``
  passes to the next one. If every implementation returns ``None`` the core raises
  :class:`cptcore.errors.PluginError`. Cross-cutting concerns *wrap* a provider hook with
  ``@hookimpl(wrapper=True)``: code before ``yield`` runs before the provider, ``result =
  yield`` receives its result, and the wrapper returns the (possibly changed) result.
  Wrappers run outside all plain implementations; among wrappers, ``tryfirst`` ones are
  outermost and otherwise the most recently registered plugin is outermost.

Hooks run at setup time, never per step or per example.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "cptcore"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator for hook implementations: ``@hookimpl``, ``@hookimpl(trylast=True)``,
#: ``@hookimpl(wrapper=True)``.
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------- registration hooks


@hookspec
def cpt_register_strategies() -> list:
    """Register parallel training strategies.

    Called: once, when a command first needs the strategy registry (``cpt train``,
    ``cpt strategies``). Returns: ``list[StrategySpec]`` (or ``None``).

    Example::

        @hookimpl
        def cpt_register_strategies():
            return [StrategySpec(name="mine", build=build_mine, options=MineOptions)]
    """


@hookspec
def cpt_register_noise() -> list:
    """Register embedding-noise methods (e.g. NEFTune), selected with ``--noise NAME``.

    Called: once, when ``cpt train`` or ``cpt noise`` builds the registry.
    Returns: ``list[NoiseSpec]`` (or ``None``). ``NoiseSpec.attach(model, options)``
    returns a handle whose ``remove()`` detaches the noise.

    Example::

        @hookimpl
        def cpt_register_noise():
            return [NoiseSpec(name="gauss", attach=attach_gauss, options=GaussOptions)]
    """


@hookspec
def cpt_register_packers() -> list:
    """Register sequence packers, selected with ``cpt prepare ... --packer NAME``.

    Called: once per ``cpt prepare`` / ``cpt packers``. Returns: ``list[PackerSpec]``.
    A packer turns tokenized documents (``input_ids``/``labels`` lists of int) into rows
    of at most ``max_length`` tokens with ``position_ids`` restarting at 0 at every
    document boundary.

    Example::

        @hookimpl
        def cpt_register_packers():
            return [PackerSpec(name="first_fit", make=make_first_fit)]
    """


@hookspec
def cpt_register_chat_templates() -> list:
    """Register chat templates, selected with ``cpt prepare sft --template NAME``.

    Called: once per ``cpt prepare sft`` / ``cpt templates``. Returns:
    ``list[ChatTemplate]``. ``render(messages, *, tokenizer, options)`` returns
    ``list[Segment]`` whose texts concatenate to the full conversation; ``train=True``
    segments (assistant content + end-of-turn) carry the loss.

    Example::

        @hookimpl
        def cpt_register_chat_templates():
            return [ChatTemplate(name="plain", render=render_plain)]
    """


@hookspec
def cpt_register_loggers() -> list:
    """Register metric loggers, selected with ``logging.loggers`` in the run config.

    Called: once per ``cpt train`` / ``cpt loggers``, and the chosen loggers are created
    on rank 0 only. Returns: ``list[LoggerSpec]``; ``create(log_dir, config)`` returns an
    object with ``log(metrics: dict[str, float], step: int)`` and ``close()``.

    Example::

        @hookimpl
        def cpt_register_loggers():
            return [LoggerSpec(name="stdout", create=lambda log_dir, config: StdoutLogger())]
    """


@hookspec
def cpt_register_embedding_inits() -> list:
    """Register initialisations of new embedding rows, selected with
    ``cpt model resize --init NAME``.

    Called: once per ``cpt model resize`` / ``cpt embedding-inits`` (and by
    :func:`cptcore.model.resize.resize_embeddings`). Returns:
    ``list[EmbeddingInitSpec]`` (or ``None``). ``init(request)`` gets a
    :class:`cptcore.model.embedding_init.InitRequest` (old rows ``[old_rows, hidden]``,
    sub-token ids of each new token, a seeded ``torch.Generator``, options) and returns
    the new rows ``[n_new, hidden]``; it runs once per matrix (input, and output when
    untied). Old rows are never passed for writing: they stay bit-identical.

    Example::

        @hookimpl
        def cpt_register_embedding_inits():
            return [EmbeddingInitSpec(name="half_mean", init=lambda req: 0.5 * req.sub_token_mean())]
    """


@hookspec
def cpt_register_filters() -> list:
    """Register ``cpt clean`` filters, selected with ``cpt clean --filter NAME``.

    Called: once per ``cpt clean`` / ``cpt filters``. Returns: ``list[FilterSpec]``.
    A ``"document"`` filter's ``check(text)`` returns ``None`` (keep) or the removal
    detail; a ``"dedup"`` filter computes ``signature(text)`` in the workers and
    ``check(signature, key)`` in the driver, in input order (see
    :class:`cptcore.specs.FilterSpec`).

    Example::

        @hookimpl
        def cpt_register_filters():
            return [FilterSpec(name="no_urls", make=lambda options, context: NoUrls())]
    """


@hookspec
def cpt_register_executors() -> list:
    """Register executors for ``cpt prepare`` / ``cpt clean --executor NAME``.

    Called: once per ``cpt prepare`` / ``cpt clean`` / ``cpt executors``. Returns:
    ``list[ExecutorSpec]``; ``make(num_proc, fn, args, address)`` returns an object with
    ``num_proc``, ``submit(items) -> future`` (``future.get()`` returns
    ``fn(*args, items)``) and ``close()`` (see :class:`cptcore.specs.ExecutorSpec`).

    Example::

        @hookimpl
        def cpt_register_executors():
            return [ExecutorSpec(name="dask", make=make_dask_executor)]
    """


@hookspec
def cpt_register_objectives() -> list:
    """Register training objectives, selected with ``training.objective`` /
    ``--objective NAME`` (built-in: ``causal_lm``).

    Called: once per ``cpt train`` / ``cpt objectives``, when the registry is built.
    Returns: ``list[ObjectiveSpec]`` (or ``None``). ``loss(logits, batch, options)``
    returns ``(loss_sum, token_count)``: a summed (never averaged) fp32 loss and the
    tokens it covers; ``count(batch)`` gives that count before the forward.

    Example::

        @hookimpl
        def cpt_register_objectives():
            return [ObjectiveSpec(name="z_loss", loss=z_loss, count=count_label_tokens,
                                  options=ZLossOptions)]
    """


@hookspec
def cpt_register_schedules() -> list:
    """Register learning-rate schedules, selected with ``schedule.name`` (built-in:
    ``cosine``, ``constant``, ``wsd``, ``rewarm``).

    Called: once per ``cpt train`` / ``cpt schedules``, when the registry is built; the
    precheck resolves ``schedule.name`` and its options and builds the schedule once to
    validate it; every Trainer (one per stage) builds it again for its own steps.
    Returns: ``list[ScheduleSpec]`` (or ``None``). ``build(options, *, warmup_steps,
    max_steps, min_lr_ratio, **more)`` returns ``f(step) -> float``, the multiplier of
    the peak LR for the 0-based update ``step`` (torch-free).

    Example::

        @hookimpl
        def cpt_register_schedules():
            return [ScheduleSpec(name="linear", build=lambda options, *, warmup_steps, max_steps, **more:
                                 lambda s: 1.0 - s / max_steps)]
    """


@hookspec
def cpt_register_commands(app: Any, pm: Any) -> None:
    """Add commands to the ``cpt`` CLI.

    Called: once, by :func:`cptcore.cli.make_app` while building the Typer app, for
    every plugin (built-in command groups use it too). Args: ``app`` the
    ``typer.Typer`` root app; ``pm`` the plugin manager (look registries up through it
    inside the command body, not at registration time). Returns: nothing.

    Example::

        @hookimpl
        def cpt_register_commands(app, pm):
            @app.command()
            def hello():
                print("hello")
    """


# ---------------------------------------------------------------- provider hooks


@hookspec(firstresult=True)
def cpt_tokenize_fn(tokenizer_path: str, add_bos: bool | None, add_eos: bool | None) -> Callable | None:
    """Return the function that tokenizes a batch of documents.

    Called: once per ``cpt prepare`` before reading input; the returned function is
    shipped to ``datasets.map(num_proc=N)`` workers, so it must be picklable (a
    module-level function or ``functools.partial`` of one).
    Args: ``tokenizer_path`` a Hugging Face tokenizer folder; ``add_bos``/``add_eos``
    ``True``/``False`` to force, ``None`` to follow the tokenizer's conventions.
    Returns: ``fn(texts: list[str]) -> list[list[int]]`` (token ids per document, BOS/EOS
    included as decided), or ``None`` to let the next implementation answer. The
    built-in (``trylast``) uses the tokenizer's fast implementation.

    Example::

        @hookimpl
        def cpt_tokenize_fn(tokenizer_path, add_bos, add_eos):
            if not tokenizer_path.endswith(".mytok"):
                return None
            return functools.partial(my_encode, tokenizer_path)
    """


@hookspec(firstresult=True)
def cpt_build_model(config: Any) -> Any:
    """Build the model to train from the resolved run config.

    Called: once per process by ``cpt train`` (and library users via
    :func:`cptcore.train.build.build_model`) before the strategy boosts it. Args:
    ``config`` the :class:`cptcore.config.RunConfig`. Returns: a
    ``torch.nn.Module`` causal LM taking ``input_ids`` ``[batch, seq]`` int64 and
    returning ``.logits`` ``[batch, seq, vocab]``, or ``None`` to pass. The built-in
    (``trylast``) loads a Hugging Face folder or GGUF file. LoRA wraps this hook
    (``wrapper=True``) to add adapters to whatever model the provider returned.

    Example::

        @hookimpl(wrapper=True)
        def cpt_build_model(config):
            model = yield
            return freeze_some_layers(model)
    """


@hookspec(firstresult=True)
def cpt_save(model: Any, out_dir: Any, config: Any, tokenizer: Any) -> Any:
    """Export a trained model as a Hugging Face folder.

    Called: by ``cpt train`` at the end (``OUT/final``) and by ``cpt export``. Args:
    ``model`` the unwrapped ``torch.nn.Module`` (full state on this process), ``out_dir``
    a ``pathlib.Path`` that does not yet exist or is empty, ``config`` the RunConfig,
    ``tokenizer`` the tokenizer to save beside it (or ``None``). Returns: the
    ``pathlib.Path`` written, or ``None`` to pass. The built-in (``trylast``) writes
    sharded safetensors, config, generation config and tokenizer. NEFTune wraps this
    hook to detach its noise hook while saving and re-attach it afterwards.

    Example::

        @hookimpl(wrapper=True)
        def cpt_save(model, out_dir, config, tokenizer):
            path = yield
            (path / "MODEL_CARD.md").write_text("trained with cptcore")
            return path
    """
