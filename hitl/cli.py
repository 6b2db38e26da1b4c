"""The ``hitl`` command line. Heavy modules are imported inside each command."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Human-in-the-loop connector: ML backend, sync and scheduler.", no_args_is_help=True)
console = Console()


@app.command()
def train(
    data: str = typer.Argument(..., help="'rotten_tomatoes', 'bbc_news', or a labelled JSONL/CSV file"),
    model_root: Path = typer.Option(Path("var/models"), envvar="HITL_MODEL_ROOT", help="model versions directory"),
    model: str = typer.Option("default", help="encoder: 'default' (bundled MiniLM) or a local HF model directory"),
    text_field: str = typer.Option("text"),
    label_field: str = typer.Option("label"),
    limit: int | None = typer.Option(None, help="train on at most this many items (stratified sample)"),
    test_fraction: float = typer.Option(0.2, help="held out for the reported metrics"),
    promote: bool = typer.Option(True, help="make the new version the served one"),
    features: str = typer.Option("embeddings", help="'embeddings' or 'embeddings+tfidf' (adds a word-feature head)"),
    seed: int = typer.Option(0),
) -> None:
    """Train a model version (frozen encoder, linear head, temperature cross-fitted on the training
    labels: the scheduler's recipe) and save it."""
    import numpy as np

    from connector.calibration import expected_calibration_error, log_loss
    from connector.classifier import TextClassifier, stratified_split
    from connector.datasets import BUILTIN, load_labeled_file
    from connector.encoder import TextEncoder
    from connector.model_store import ModelStore

    ds = BUILTIN[data]() if data in BUILTIN else load_labeled_file(data, text_field=text_field, label_field=label_field)
    texts, labels = np.array(ds.texts, dtype=object), np.array(ds.labels)
    if limit and limit < len(texts):
        _, keep = stratified_split(labels, limit / len(texts), seed=seed)
        texts, labels = texts[keep], labels[keep]
    train_idx, test_idx = stratified_split(labels, test_fraction, seed=seed)
    encoder = TextEncoder(model)
    console.print(f"encoding {len(texts)} texts of {ds.name} on {encoder.device}")
    x = encoder.encode(list(texts), progress=True)
    clf = TextClassifier(encoder, features=features, random_state=seed).fit_embeddings(
        x[train_idx], labels[train_idx].tolist(), texts=list(texts[train_idx]), corpus=list(texts))
    metrics: dict = {"n_train": len(train_idx), "n_test": len(test_idx), "dataset": ds.name}
    if len(test_idx):
        y = clf.label_indices(labels[test_idx].tolist())
        test_texts = list(texts[test_idx])
        raw = clf.predict_proba_from_embeddings(x[test_idx], texts=test_texts, calibrated=False)
        cal = clf.predict_proba_from_embeddings(x[test_idx], texts=test_texts)
        metrics.update(accuracy=float((cal.argmax(1) == y).mean()),
                       ece_uncalibrated=expected_calibration_error(raw, y),
                       ece=expected_calibration_error(cal, y), log_loss=log_loss(cal, y))
    meta = ModelStore(model_root).save(clf, metrics=metrics, encoder_ref=model, promote=promote)
    table = Table(title=f"model version {meta.version} ({model_root})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("temperature", f"{meta.temperature:.3f}")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


@app.command()
def versions(model_root: Path = typer.Option(Path("var/models"), envvar="HITL_MODEL_ROOT")) -> None:
    """List model versions with their metrics."""
    from connector.model_store import ModelStore

    store = ModelStore(model_root)
    current = store.current()
    table = Table(title=str(model_root))
    for col in ("version", "created", "labels", "T", "accuracy", "ECE", ""):
        table.add_column(col)
    for v in store.versions():
        m = store.meta(v)
        table.add_row(v, m.created_at, ",".join(m.labels), f"{m.temperature:.3f}",
                      f"{m.metrics.get('accuracy', float('nan')):.4f}", f"{m.metrics.get('ece', float('nan')):.4f}",
                      "serving" if v == current else "")
    console.print(table)


@app.command()
def promote(version: str, model_root: Path = typer.Option(Path("var/models"), envvar="HITL_MODEL_ROOT")) -> None:
    """Make VERSION the served one (a running backend switches within its reload interval)."""
    from connector.model_store import ModelStore

    try:
        ModelStore(model_root).promote(version)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc), param_hint="VERSION") from None
    console.print(f"promoted {version}")


@app.command()
def serve(
    host: str | None = typer.Option(None, envvar="HITL_HOST"),
    port: int | None = typer.Option(None, envvar="HITL_PORT"),
) -> None:
    """Run the ML backend (Label Studio protocol and /v1/predict)."""
    from ml_backend.server import serve as run
    from ml_backend.settings import BackendSettings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    run(BackendSettings(**overrides))


@app.command()
def up() -> None:
    """Start Label Studio and the ML backend locally, with a demo project (state under var/)."""
    from hitl.local.stack import up as run_up

    run_up()


@app.command()
def down() -> None:
    """Stop what `hitl up` started."""
    from hitl.local.stack import down as run_down

    run_down()


sync_app = typer.Typer(help="Move items to the annotation tool and annotations back.", no_args_is_help=True)
app.add_typer(sync_app, name="sync")


def _summary(reports) -> None:
    table = Table(title="sync")
    table.add_column("pass")
    table.add_column("result")
    for r in reports:
        table.add_row(r.name, ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing to do")
    console.print(table)


def _run_sync(names: list[str]) -> None:
    from rich.progress import Progress

    from sync.runner import LOCKED_EXIT, SyncLocked, build_sync, open_store, run_passes, sync_lock
    from sync.settings import SyncSettings

    settings = SyncSettings()
    with open_store(settings) as store:
        try:
            with sync_lock(store), Progress(transient=True, console=console) as progress:
                tasks: dict[str, int] = {}

                def advance(name: str, n: int) -> None:
                    if name not in tasks:
                        tasks[name] = progress.add_task(name, total=None)
                    progress.advance(tasks[name], n)

                reports = run_passes(build_sync(settings, store, progress=advance), names)
        except SyncLocked as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(LOCKED_EXIT) from None
    _summary(reports)


@app.command()
def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV with an id and a text column"),
    text_field: str = typer.Option("text"),
    id_field: str = typer.Option("id"),
) -> None:
    """Add items to the state store (idempotent by id; a changed text becomes a new version)."""
    from connector.ingest import ingest_file
    from sync.runner import open_store
    from sync.settings import SyncSettings

    with open_store(SyncSettings()) as store:
        result = ingest_file(store, file, text_field=text_field, id_field=id_field)
    console.print(f"added {result.added}, new versions {result.new_versions}, unchanged {result.unchanged}, "
                  f"errors {len(result.errors)}")
    for line in result.errors[:20]:
        console.print(f"  [red]{line}[/red]")
    if result.errors:
        raise typer.Exit(1)


@sync_app.command("push")
def sync_push() -> None:
    """Predict, route and push items routed to review.

    Runs under the scheduler's sync lock: while a sync job or another ``hitl sync`` holds it, says
    so and exits 75 without doing anything."""
    _run_sync(["predict", "route", "push"])


@sync_app.command("pull")
def sync_pull() -> None:
    """Pull annotations changed since the last pull (under the sync lock, like ``sync push``)."""
    _run_sync(["pull"])


@sync_app.command("run")
def sync_run() -> None:
    """All passes in a loop, with the webhook receiver (HITL_SYNC_PORT) that wakes it; a cycle that
    finds the sync lock held by a scheduler's sync job is skipped."""
    import logging

    from sync.runner import build_sync, open_store, run_forever
    from sync.settings import SyncSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SyncSettings()
    with open_store(settings) as store:
        run_forever(settings, build_sync(settings, store), on_cycle=_summary)


scheduler_app = typer.Typer(help="The scheduler: sync, metrics and retraining jobs.", no_args_is_help=True)
app.add_typer(scheduler_app, name="scheduler")


@scheduler_app.command("run")
def scheduler_run() -> None:
    """Run the jobs on their schedules until stopped (SIGINT/SIGTERM), with the webhook receivers
    and /metrics on HITL_SYNC_PORT. Safe to start twice on one database: each job run happens once."""
    import logging

    from sync.runner import open_store, run_scheduler
    from sync.settings import SyncSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SyncSettings()
    with open_store(settings) as store:
        run_scheduler(settings, store)


@scheduler_app.command("once")
def scheduler_once(job: str = typer.Argument(..., help="sync, metrics, retrain or thresholds")) -> None:
    """Run one job now (through the same lock and run record as the scheduler)."""
    from sync.runner import build_scheduler, open_store
    from sync.settings import SyncSettings

    settings = SyncSettings()
    with open_store(settings) as store:
        scheduler = build_scheduler(settings, store)
        if job not in scheduler.jobs:
            raise typer.BadParameter(f"unknown job {job!r}; jobs: {', '.join(scheduler.jobs)}")
        outcome = scheduler.execute(job)
        run = store.job_runs.list(job, limit=1)
    console.print(f"{job}: {outcome}" + (f" - {run[0].error or run[0].detail}" if run else ""))
    if outcome == "failed":
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Where the loop stands: items by state, the auto-accept rule in force, the stopping rule, and
    what the checks found."""
    from connector.auto_accept import in_force
    from connector.snapshots import ChecksSnapshot, StoppingSnapshot, read_latest
    from connector.stopping import describe
    from connector.task_spec import TaskSpec
    from sync.runner import open_store
    from sync.settings import SyncSettings

    settings = SyncSettings()
    spec = TaskSpec.load(settings.task) if Path(settings.task).exists() else None
    with open_store(settings) as store:
        states, rule, checks = store.items.counts_by_state(), in_force(store, spec), read_latest(store, ChecksSnapshot)
        stopping = read_latest(store, StoppingSnapshot)
    console.print("items: " + ", ".join(f"{s} {n}" for s, n in states.items() if n) + f" (total {sum(states.values())})")
    rules = {"certified": f"certified, confidence >= {rule.threshold}",
             "uncertified": f"UNCERTIFIED fixed threshold {rule.threshold} ([thresholds] adapt = false)",
             "off": "off: PAUSED by failing spot checks" if rule.paused else "off: no certified threshold yet"}
    console.print(f"auto-accept: {rules[rule.state]}")
    console.print(f"stopping rule: {describe(None if stopping is None else stopping.snapshot)}", highlight=False,
                  soft_wrap=True)
    table = Table(title="checks (realized accuracy, 95 % Clopper-Pearson interval)")
    for col in ("checks", "model version", "label", "items", "accuracy", "interval"):
        table.add_column(col)
    for r in checks.snapshot.rows if checks else []:
        table.add_row(r.kind, r.model_version, "all" if r.label == "*" else r.label, str(r.n),
                      f"{r.accuracy:.1%}" if r.accuracy is not None else "-",
                      f"{r.lower:.1%} - {r.upper:.1%}" if r.lower is not None and r.upper is not None else "-")
    console.print(table if checks and checks.snapshot.rows else "checks: none answered yet")


@app.command()
def jobs() -> None:
    """List the scheduled jobs: trigger (from the settings), runs, last run, next run, last error."""
    from datetime import UTC, datetime

    from sync.runner import open_store, triggers
    from sync.settings import SyncSettings

    settings = SyncSettings()
    fired = triggers(settings)
    now = datetime.now(UTC)
    next_runs = {job_id: t.get_next_fire_time(None, now) for job_id, t in fired.items()}
    with open_store(settings) as store:
        summary = store.job_runs.summary()
    table = Table(title="jobs")
    for col in ("job", "trigger", "runs", "failures", "last run", "next run", "last error"):
        table.add_column(col)
    for job_id in sorted(set(fired) | set(summary)):
        s, nxt = summary.get(job_id, {}), next_runs.get(job_id)
        last, err = s.get("last_run"), s.get("last_error")
        table.add_row(job_id, str(fired[job_id]) if job_id in fired else "by hand", str(s.get("runs", 0)),
                      str(s.get("failures", 0)), f"{last.started_at:%Y-%m-%d %H:%M:%S} {last.status}" if last else "-",
                      f"{nxt:%Y-%m-%d %H:%M:%S}" if nxt else "-",
                      f"{err.started_at:%Y-%m-%d %H:%M:%S} {err.error}" if err else "-")
    console.print(table)


@app.command()
def history(
    item_id: str = typer.Argument(..., help="the item's external id (every version of it)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON array of the events, for machines"),
    task_wide: bool = typer.Option(True, help="also the threshold changes since the item was ingested"),
) -> None:
    """Every change to ITEM_ID's label, oldest first: answers added, edited, deleted; consensus
    changes; auto-accepts (with the threshold and model version); threshold changes; sends-back;
    adjudications."""
    import json

    from connector.store.history import describe
    from sync.runner import open_store
    from sync.settings import SyncSettings

    with open_store(SyncSettings()) as store:
        versions = store.items.versions(item_id)
        if not versions:
            console.print(f"[red]no item with id {item_id!r}[/red]")
            raise typer.Exit(1)
        events = store.history.for_item([v.id for v in versions],
                                        task_wide_since=versions[0].created_at if task_wide else None)
    version_of = {v.id: v.version for v in versions}
    if as_json:
        typer.echo(json.dumps([{"id": e.id, "at": e.at.isoformat(), "kind": e.kind, "actor": e.actor,
                                "item_version": version_of.get(e.item_id) if e.item_id is not None else None,
                                "source_at": e.source_at.isoformat() if e.source_at else None, "detail": e.detail}
                               for e in events], indent=1))
        return
    table = Table(title=f"history of {item_id} ({len(events)} events)")
    for col in ("at (UTC)", "version", "event", "by", "what", "tool time"):
        table.add_column(col)
    for e in events:
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", f"v{version_of[e.item_id]}" if e.item_id is not None else "task",
                      e.kind, e.actor, describe(e), f"{e.source_at:%Y-%m-%d %H:%M:%S}" if e.source_at else "-")
    console.print(table)


@app.command()
def report(out: Path = typer.Option(Path("var/report.html"), help="where to write the HTML"),
           model_root: Path = typer.Option(Path("var/models"), envvar="HITL_MODEL_ROOT")) -> None:
    """Write the HTML report: calibration, accuracy vs review rate, thresholds, labels, agreement, annotators, versions."""
    from connector.model_store import ModelStore
    from connector.report import write_report
    from connector.task_spec import TaskSpec
    from sync.runner import open_store
    from sync.settings import SyncSettings

    settings = SyncSettings()
    spec = TaskSpec.load(settings.task) if Path(settings.task).exists() else None
    models = ModelStore(model_root)
    if spec is not None and spec.kind == "label" and (own := spec.model_dir(spec.primary)) is not None:
        from connector.control_models import control_store

        models = control_store(model_root, own)  # a label set's or an NER project's versions: its own store
    with open_store(settings) as store:
        path = write_report(store, models, out, spec=spec)
    typer.echo(str(path))


@app.command()
def export(
    out: Path = typer.Option(Path("var/export.parquet"), help="the file; its suffix (.jsonl, .csv, .parquet) is the format"),
    fmt: str | None = typer.Option(None, "--format", help="jsonl, csv, parquet, or all (the files beside --out); "
                                                           "corrections and preferences: jsonl or parquet"),
    only: str = typer.Option("settled", help="labels: settled: final labels (humans, adjudication, auto-accept, "
                                             "gold); all: every item, model suggestions too"),
    since: str | None = typer.Option(None, help="ISO date or time: only items whose final label changed since "
                                                "(corrections, preferences: decided by a person since)"),
    kind: str = typer.Option("labels", help="labels: the labelled set, one row per item; corrections: one row per "
                                            "on-line decision a person decided (input, model output, corrected "
                                            "output, outcome, reviewer, comment); preferences: a pair (prompt, "
                                            "chosen = the correction, rejected = the model output) per 'correct' "
                                            "outcome. Deadline fallbacks (reviewer 'timeout') are no human outcome "
                                            "and automatic decisions nobody audited have none: both are left out."),
    control: str | None = typer.Option(None, help="a span control of the task file: its settled spans as JSONL "
                                                  "(offsets, their text, spaCy-style (start, end, label) tuples)"),
) -> None:
    """Write the labelled set (one row per item: label, where it came from, answers, model score),
    or people's outcomes on on-line decisions for training (--kind corrections / preferences)."""
    from connector.export import counts, format_of, parse_since, write
    from connector.export_corrections import KINDS
    from connector.task_spec import TaskSpec
    from sync.export_controls import task_export_rows
    from sync.runner import open_store
    from sync.settings import SyncSettings

    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r}: {', '.join(KINDS)}", param_hint="--kind")
    if only not in ("settled", "all"):
        raise typer.BadParameter(f"{only!r}: settled or all", param_hint="--only")
    try:
        if kind == "labels":
            format_of(out, fmt)
        else:
            from connector.export_corrections import formats

            formats(out, fmt)
        after = parse_since(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if kind != "labels":
        _export_outcomes(kind, out, fmt, after)
        return
    if control is not None:
        _export_spans(control, out)
        return
    settings = SyncSettings()
    spec = TaskSpec.load(settings.task) if Path(settings.task).exists() else None  # label sets, other controls
    with open_store(settings) as store:
        rows = task_export_rows(store, spec, only=only, since=after)  # type: ignore[arg-type]
    for path in write(rows, out, fmt):
        typer.echo(str(path))
    console.print(f"{len(rows)} items: " + (", ".join(f"{k} {v}" for k, v in counts(rows).items()) or "none"))


def _export_spans(name: str, out: Path) -> None:
    from connector.task_spec import TaskSpec
    from sync.jobs import consensus_policy
    from sync.runner import open_store
    from sync.settings import SyncSettings
    from sync.span_export import export_spans

    settings = SyncSettings()
    spec = TaskSpec.load(settings.task)
    if out.suffix != ".jsonl":
        out = out.with_suffix(".jsonl")
    with open_store(settings) as store:
        try:
            n = export_spans(store, spec, name, out, consensus_policy(spec))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--control") from None
    typer.echo(str(out))
    console.print(f"{n} items with settled spans of {name!r}")


def _export_outcomes(kind: str, out: Path, fmt: str | None, since: datetime | None) -> None:
    from connector import export_corrections as ec
    from sync.runner import open_store
    from sync.settings import SyncSettings

    with open_store(SyncSettings()) as store:
        rows = ec.correction_rows(store, since=since)
    if kind == "corrections":
        paths = ec.write(rows, out, fmt)
        told = f"{len(rows)} reviewed decisions: " + (", ".join(f"{k} {v}" for k, v in ec.counts(rows).items())
                                                      or "none")
    else:
        pairs = ec.preference_rows(rows)
        paths = ec.write(pairs, out, fmt, pairs=True)
        told = f"{len(pairs)} preference pairs from {ec.counts(rows).get('correct', 0)} corrections"
    for path in paths:
        typer.echo(str(path))
    console.print(told)


@app.command()
def simulate(
    data: str = typer.Argument("bbc_news", help="'bbc_news', 'rotten_tomatoes', a labelled JSONL/CSV file, or "
                                                "'wnut16_types' (label sets) / 'wnut16' (entity spans)"),
    text_field: str = typer.Option("text"),
    label_field: str = typer.Option("label"),
    budget: float = typer.Option(0.15, help="share of the items humans may review"),
    batch: int = typer.Option(20, help="items sent to review per round"),
    seed_size: int = typer.Option(50, help="random items labelled before the first model"),
    accuracy: float = typer.Option(0.97, help="each simulated annotator's accuracy"),
    overlap: int = typer.Option(2, help="answers per item (a third when two disagree)"),
    target_error: float = typer.Option(0.05, help="error allowed among auto-accepted items (certified at 95 %)"),
    audit_share: float = typer.Option(0.2, help="share of each round's seats for uniform random audits"),
    accuracy_drop_alpha: float | None = typer.Option(
        None, help="promote a better candidate despite an accuracy drop unless a paired test finds it at this level"),
    eval_fraction: float = typer.Option(0.0, help="held out of the loop to measure the model (0.2 with random)"),
    anchoring: float = typer.Option(0.0, min=0.0, max=1.0,
                                    help="chance that an annotator shown the model's label copies it"),
    show_suggestion: str = typer.Option("except_checks", help="'except_checks' (checks blind), 'always' or 'never'"),
    seeds: int = typer.Option(1, help="runs with seeds first_seed .. first_seed+N-1"),
    first_seed: int = typer.Option(0, help="the first seed (to split a long sweep across processes)"),
    compare_random: bool = typer.Option(True, help="also run random picks instead of active learning"),
    offline: bool = typer.Option(False, "--offline", help="the store alone, no annotation tool (fast)"),
    limit: int | None = typer.Option(None, help="at most this many items (stratified)"),
    features: str = typer.Option("embeddings+tfidf", help="'embeddings' or 'embeddings+tfidf' (word features too)"),
    chunk: bool = typer.Option(True, help="embed long texts window by window (else cut at 256 tokens)"),
    stop_early: bool = typer.Option(False, "--stop-early",
                                    help="end a run at the round the stopping rule fires, not at the budget"),
    stop_kappa: float = typer.Option(0.99, help="stopping rule: kappa between successive models that counts as stable"),
    stop_window: int = typer.Option(3, help="stopping rule: successive kappas in a row at or above it"),
    stop_set_size: int = typer.Option(500, help="stopping rule: items in the stop set"),
    finetune: bool = typer.Option(True, help="fine-tuned encoder candidates in retraining ([retraining.finetune])"),
    label_error: float = typer.Option(0.02, help="label sets: chance an annotator gets each label's yes/no wrong"),
    span_drop: float = typer.Option(0.05, help="spans: chance an annotator leaves out a span"),
    span_shift: float = typer.Option(0.05, help="spans: chance an annotator moves a boundary by a word"),
    span_relabel: float = typer.Option(0.05, help="spans: chance an annotator gives a span another type"),
    out: Path = typer.Option(Path("var/simulation.html"), help="the HTML report"),
    cache: Path = typer.Option(Path("var/embeddings.db"), help="embedding cache shared by runs"),
) -> None:
    """The whole loop in rounds with simulated annotators; how much human work it saves."""
    import json

    import numpy as np
    from rich.progress import Progress

    from connector.classifier import stratified_split
    from connector.datasets import BUILTIN, LabeledTexts, load_labeled_file
    from connector.encoder import TextEncoder
    from connector.store import StateStore
    from hitl.simulate import SimulationConfig, labels_to_reach, run, write_html
    from hitl.simulate.report import stopping_text
    from hitl.simulate.structured import DATASETS, simulate_structured

    if show_suggestion not in ("except_checks", "always", "never"):
        raise typer.BadParameter("show_suggestion: 'except_checks', 'always' or 'never'")
    if data in DATASETS:  # label sets and spans: their own loops over the core (no annotation tool)
        cache_store = StateStore(f"sqlite:///{cache}")
        cache_store.migrate()
        try:
            simulate_structured(data, console=console, encoder=TextEncoder(chunk=chunk), cache_store=cache_store,
                                budget=budget, batch=batch, seed_size=seed_size, overlap=overlap, seeds=seeds,
                                first_seed=first_seed, compare_random=compare_random, eval_fraction=eval_fraction,
                                limit=limit, label_error=label_error, span_drop=span_drop, span_shift=span_shift,
                                span_relabel=span_relabel, out=out)
        finally:
            cache_store.close()
        return
    ds = BUILTIN[data]() if data in BUILTIN else load_labeled_file(data, text_field=text_field, label_field=label_field)
    if limit and limit < len(ds.texts):
        _, keep = stratified_split(np.array(ds.labels), limit / len(ds.texts), seed=0)
        ds = LabeledTexts(ds.name, [ds.texts[i] for i in keep], [ds.labels[i] for i in keep])
    encoder = TextEncoder(chunk=chunk)
    cache_store = StateStore(f"sqlite:///{cache}")
    cache_store.migrate()
    label_studio = None
    server = None
    if not offline:
        import tempfile

        from hitl.local.label_studio_server import start_from_template, throwaway_credentials

        server = start_from_template(Path(tempfile.mkdtemp(prefix="hitl-simulate-")), **throwaway_credentials())
        label_studio = (server.url, server.token)
        console.print(f"a throwaway Label Studio at {server.url} (stopped at the end)")
    results = []
    strategies = ["least_confidence", "random"] if compare_random else ["least_confidence"]
    try:
        with Progress(console=console, transient=True) as progress:
            for seed in range(first_seed, first_seed + seeds):
                for strategy in strategies:
                    cfg = SimulationConfig(budget=budget, batch=batch, seed_size=seed_size, annotator_accuracy=accuracy,
                                           overlap=overlap, strategy=strategy, target_error=target_error,
                                           audit_share=audit_share, accuracy_drop_alpha=accuracy_drop_alpha,
                                           eval_fraction=eval_fraction if not compare_random else max(eval_fraction, 0.2),
                                           seed=seed, features=features, anchoring=anchoring,
                                           show_suggestion=show_suggestion, stop_early=stop_early,
                                           stop_kappa=stop_kappa, stop_window=stop_window,
                                           stop_set_size=stop_set_size, finetune=finetune)
                    task = progress.add_task(f"{ds.name} {strategy} seed {seed}", total=budget)
                    results.append(run(ds, cfg, cache_store=cache_store, encoder=encoder, label_studio=label_studio,
                                       progress=lambda p, t=task: progress.update(t, completed=p.get("review_share", 0))))
                    out.parent.mkdir(parents=True, exist_ok=True)  # figures so far, should a long sweep stop
                    out.with_suffix(".json").write_text(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    finally:
        cache_store.close()
        if server is not None:
            server.stop()
    table = Table(title=f"simulation: {ds.name}, {len(ds.texts)} items, annotators at {accuracy:.0%}")
    for col in ("strategy", "seed", "reviewed", "answers/item", "label accuracy", "no review", "oracle",
                "auto-accept error", "ECE before → after"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r.strategy, str(r.seed), f"{r.reviewed} ({r.review_share:.1%})",
                      f"{r.answers / max(r.reviewed, 1):.2f}", f"{r.label_accuracy:.2%}", f"{r.no_review_accuracy:.2%}",
                      f"{r.oracle_accuracy:.2%}",
                      "-" if r.auto_accept_error is None else f"{r.auto_accept_error:.2%} (≤ {r.target_error:.0%}?)",
                      f"{r.ece_uncalibrated:.3f} → {r.ece_calibrated:.3f}")
    console.print(table)
    for r in results:
        console.print(f"stopping rule, {r.strategy} seed {r.seed}: {stopping_text(r)}", highlight=False, soft_wrap=True)
        if r.finetuned_tried:
            console.print(f"fine-tuning, {r.strategy} seed {r.seed}: tried in {r.finetuned_tried} retrainings, "
                          f"{r.finetuned_promoted} fine-tuned versions promoted; re-embedding with their encoders "
                          f"{r.reembed_s:.1f} s for {r.reembedded} texts", highlight=False, soft_wrap=True)
    savings: dict[str, list[float]] = {"eval_accuracy": [], "eval_accuracy_newest": []}
    for seed in range(first_seed, first_seed + seeds):
        al = next((r for r in results if r.seed == seed and r.strategy == "least_confidence"), None)
        rnd = next((r for r in results if r.seed == seed and r.strategy == "random"), None)
        if not (al and rnd and rnd.rounds and "eval_accuracy" in rnd.rounds[-1]):
            continue
        for key, what in (("eval_accuracy", "served model"), ("eval_accuracy_newest", "newest model")):
            goal = rnd.rounds[-1][key]
            need = labels_to_reach(al.rounds, goal, key=key)
            saved = 0.0 if need is None else 1 - need / rnd.reviewed
            savings[key].append(saved)
            saving = "not reached" if need is None else f"{need} vs {rnd.reviewed}: {saved:.0%} fewer"
            console.print(f"seed {seed}, {what}: active learning reaches random's final accuracy {goal:.2%} "
                          f"with {saving}")
    for key, what in (("eval_accuracy", "served model"), ("eval_accuracy_newest", "newest model")):
        if len(savings[key]) > 1:
            console.print(f"{what}: {np.mean(savings[key]):.0%} fewer labels on average over {len(savings[key])} seeds")
    main = [r for r in results if r.strategy == "least_confidence"]
    if len(main) > 1:
        acc = np.array([r.label_accuracy for r in main])
        share = np.array([r.review_share for r in main])
        certified = [r for r in main if r.auto_accept_error is not None]
        within = sum(r.auto_accept_error <= r.target_error for r in certified)
        console.print(f"over {len(main)} seeds: label accuracy {acc.mean():.2%} (min {acc.min():.2%}) with "
                      f"{share.mean():.1%} reviewed; auto-accept error at or under the target in {within} of "
                      f"{len(certified)} runs that auto-accepted ({len(main) - len(certified)} accepted nothing)")
        fired = [r for r in main if r.stop_reviewed is not None]
        if fired:
            at = np.mean([r.stop_review_share for r in fired])
            there = np.mean([r.stop_label_accuracy for r in fired])
            full = "" if stop_early else f" vs {np.mean([r.label_accuracy for r in fired]):.2%} at the full budget"
            console.print(f"stopping rule fired in {len(fired)} of {len(main)} runs, at {at:.1%} reviewed on "
                          f"average: label accuracy there {there:.2%}{full}")
        if certified:
            realized = np.array([r.auto_accept_error for r in certified])
            estimated = np.array([r.estimated_error or 0.0 for r in certified])
            console.print(f"auto-accepted items' error: realized {realized.mean():.2%} (max {realized.max():.2%}), "
                          f"estimated from the evidence {estimated.mean():.2%}; mean threshold "
                          f"{np.mean([r.threshold for r in certified]):.3f}, {np.mean([r.auto_accepted for r in certified]):.0f} "
                          f"items accepted")
    write_html(results, out, title=f"hitl simulate: {ds.name}")
    out.with_suffix(".json").write_text(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    console.print(f"report: {out} (figures: {out.with_suffix('.json')})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
