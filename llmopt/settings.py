"""One typed settings object for the whole system.

Every value has an embedded-profile default and can be overridden by an ``LLMOPT_*`` environment
variable (``LLMOPT_HOME``, ``LLMOPT_DATABASE_URL``, ...). Nothing happens at import time:
folders are created only by :meth:`Settings.ensure_home`, called by the commands that write state.

Examples
--------
>>> s = Settings(home="/tmp/llmopt-doc")
>>> s.event_log_url
'sqlite:////tmp/llmopt-doc/events.db'
>>> Settings(home="/tmp/x", database_url="postgresql+psycopg://u@h/db").event_log_url
'postgresql+psycopg://u@h/db'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PACKAGE_DATA = Path(__file__).resolve().parent / "data"


class AutopilotRules(BaseModel):
    """The closed loop's rules, in one object: challenger traffic, promotion and rollback.

    Set from the environment as ``LLMOPT_AUTOPILOT__<FIELD>`` (e.g.
    ``LLMOPT_AUTOPILOT__START_PERCENT=5``) or whole, as JSON in ``LLMOPT_AUTOPILOT``.

    >>> AutopilotRules().start_percent, AutopilotRules().steps
    (10.0, (25.0, 50.0))
    >>> AutopilotRules(steps=(50, 25))
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for AutopilotRules
      Value error, steps must increase from start_percent up to at most 100, got (50.0, 25.0) ...
    """

    model_config = {"frozen": True, "extra": "forbid"}

    enabled: bool = Field(
        default=True,
        description=(
            "A version aliased staging gets canary traffic with no operator; off: only "
            "/admin/traffic (or serving_traffic_mode) gives it traffic."
        ),
    )
    start_percent: float = Field(
        default=10.0, gt=0, le=100, description="The canary's first share of decisions (%)."
    )
    steps: tuple[float, ...] = Field(
        default=(25.0, 50.0),
        description="Next canary shares (%), one every step_s while the canary stays healthy.",
    )
    step_s: float = Field(default=300.0, gt=0, description="Seconds between canary steps.")
    assignment: Literal["decision", "tenant"] = Field(
        default="decision",
        description=(
            "How the canary share is drawn: 'decision' (each decision at random, its share in "
            "the logged propensity: an unconfounded A/B test) or 'tenant' (sticky per tenant, "
            "for users who need one model per tenant or conversation)."
        ),
    )
    min_feedback: int = Field(
        default=50, ge=1, description="Feedback per version before any SLO or A/B verdict."
    )
    reward_margin: float = Field(
        default=0.05,
        ge=0,
        description="Roll back when the version's mean reward trails its reference's by more.",
    )
    error_margin: float = Field(
        default=0.10,
        ge=0,
        description="Roll back when the version's error rate exceeds its reference's by more.",
    )
    max_error_rate: float = Field(
        default=0.25, gt=0, le=1, description="SLO: largest error rate of a version."
    )
    max_p95_latency_ms: float | None = Field(
        default=None, gt=0, description="SLO: largest p95 latency (ms) of a version (unset: none)."
    )
    max_cost_per_request_usd: float | None = Field(
        default=None, gt=0, description="SLO: largest mean cost per request (unset: none)."
    )
    min_quality: float | None = Field(
        default=None, ge=0, le=1, description="SLO: lowest mean quality of a version (unset: none)."
    )
    prod_watch_s: float = Field(
        default=900.0,
        ge=0,
        description=(
            "Seconds a freshly promoted prod version is watched against the SLOs and its "
            "predecessor; a breach rolls prod back to the previous version."
        ),
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Level of the mSPRT that decides prod."
    )
    min_samples: int = Field(
        default=100, ge=1, description="Online decisions per version before the mSPRT may decide."
    )
    min_effect: float = Field(
        default=0.01,
        ge=0,
        description=(
            "Smallest reward gain worth a promotion: the test ends for futility once the "
            "challenger cannot be better by this much (0: no futility stop)."
        ),
    )
    non_inferiority_margin: float | None = Field(
        default=0.02,
        ge=0,
        description=(
            "A challenger the mSPRT shows to be worse by at most this much reward is promoted "
            "too (a retrained version as good as the live champion takes over, so what was "
            "learned online becomes the durable prod version); unset: only a significantly "
            "better challenger is promoted."
        ),
    )
    max_samples: int = Field(
        default=10000,
        ge=1,
        description=(
            "Online decisions per version after which an undecided test ends without promotion "
            "(so that one near-tie cannot hold the queue of newer versions forever; with a "
            "reward standard deviation of 0.33, about 10,000 are needed to show an equal "
            "version non-inferior at a 0.02 margin)."
        ),
    )

    @model_validator(mode="after")
    def _increasing_steps(self) -> AutopilotRules:
        previous = self.start_percent
        for x in self.steps:
            if not previous < x <= 100.0:
                raise ValueError(
                    "steps must increase from start_percent up to at most 100, "
                    f"got {tuple(self.steps)}"
                )
            previous = x
        return self


class Settings(BaseSettings):
    """Settings of llm-auto-optimizer; environment variables are ``LLMOPT_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="LLMOPT_", env_nested_delimiter="__", extra="ignore", env_parse_none_str="null"
    )

    home: Path = Field(
        default=Path(".llmopt"),
        description="State directory of the embedded profile (event log, artifacts, policy state).",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the event log. Unset: SQLite at <home>/events.db. "
            "Production: postgresql+psycopg://user@host:5432/db."
        ),
    )
    catalog_path: Path = Field(
        default=_PACKAGE_DATA / "model_catalog.yaml",
        description="Model catalog YAML (providers, context windows, latency, price overrides).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis of the production profile (Feast online store, shared serving state).",
    )
    require_services: bool = Field(
        default=False,
        description="Tests needing PostgreSQL/Redis fail, not skip, when those do not answer.",
    )
    default_willingness_to_pay: float = Field(
        default=0.05,
        gt=0,
        description="USD a tenant pays for one unit of quality (0..1) unless it says otherwise.",
    )
    default_latency_weight: float = Field(
        default=0.0,
        ge=0,
        description="Quality units lost per second of latency unless the tenant says otherwise.",
    )
    # -- pipelines: MLflow, Optuna, Prefect (issue #5) --
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description=(
            "MLflow tracking and registry store. Unset: SQLite at <home>/mlflow.db. "
            "Production: postgresql+psycopg://user@host:5432/mlflow (its own database) or an "
            "http://127.0.0.1:5000 tracking server."
        ),
    )
    mlflow_artifacts_uri: str | None = Field(
        default=None,
        description="Where new MLflow experiments keep artifacts. Unset: <home>/mlartifacts.",
    )
    optuna_storage_url: str | None = Field(
        default=None,
        description=(
            "Optuna storage of the HPO study. Unset: SQLite at <home>/optuna.db. Production: "
            "a PostgreSQL database of its own (Optuna and the event log both keep an "
            "alembic_version table)."
        ),
    )
    prefect_home: Path | None = Field(
        default=None,
        description=(
            "PREFECT_HOME of the CLI's flows (ephemeral API database). Unset: <home>/prefect."
        ),
    )
    register_min_events: int = Field(
        default=200,
        ge=1,
        description=(
            "Training registers a new version only once it has learned at least this many "
            "events since the version it would replace, or when its off-policy estimate leaves "
            "that version's confidence interval; every run logs its metrics either way."
        ),
    )

    # -- serving (issue #6) --
    client_keys: str = Field(
        default="",
        description=(
            "Comma-separated API keys of clients (Authorization: Bearer KEY). With neither "
            "client_keys nor admin_keys set the service runs open (embedded profile) and warns."
        ),
    )
    admin_keys: str = Field(
        default="",
        description="Comma-separated API keys that may also call /admin/* (and everything else).",
    )
    client_key_tenants: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            'Tenants each client key may act for, JSON: {"sha256:<hex>": ["acme"]} (a key of '
            'client_keys, or its digest -> its tenants; "*": any tenant). Once set, a client key '
            "not listed may act for no tenant (403); admin keys act for every tenant. Empty: "
            "every key may act for any tenant."
        ),
    )
    client_key_limits: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            'Limits of a key of its own, JSON: {"sha256:<hex>": {"daily_budget_usd": 2.0, '
            '"rate_per_s": 5}} (a key of client_keys or admin_keys, or its digest -> its limits, '
            "each optional). rate_per_s replaces serving_rate_limit_per_s for that key (burst: "
            "twice it; 0: no limit); daily_budget_usd caps the key's spend of the UTC day on top "
            "of its tenant's budget (a decision must fit both). Unknown keys or fields, "
            "negative or non-numeric values stop the start. Empty: every key has the global "
            "rate limit and only its tenant's budget."
        ),
    )
    metrics_require_key: bool = Field(
        default=False,
        description="GET /metrics needs an admin key (401 without, 403 with a client key).",
    )
    serving_model_source: str = Field(
        default="registry",
        description=(
            "Where serving loads policies: 'registry' (MLflow aliases prod/staging, falling back "
            "to the local state file), 'local' (the state file only) or 'fresh' (a new "
            "recommended policy). With nothing to load, a fresh recommended policy learns online."
        ),
    )
    serving_poll_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between alias checks of the model source (0: only /admin/reload).",
    )
    serving_traffic_mode: str = Field(
        default="champion",
        description="Start-up traffic mode: champion, canary or shadow (see /admin/traffic).",
    )
    serving_canary_percent: float = Field(
        default=0.0, ge=0, le=100, description="Share of tenants the challenger serves in canary."
    )
    serving_max_body_bytes: int = Field(
        default=2_000_000, gt=0, description="Largest request body accepted (413 beyond)."
    )
    serving_rate_limit_per_s: float = Field(
        default=1000.0,
        ge=0,
        description="Requests per second per API key (burst: twice that); 0 disables the limit.",
    )
    serving_daily_budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Default daily budget of every tenant in USD (unset: no cap).",
    )
    upstream_url: str | None = Field(
        default=None,
        description=(
            "OpenAI-compatible base URL (e.g. http://127.0.0.1:8001/v1) that every catalog model "
            "is forwarded to by the gateway (/v1/chat/completions); `llmopt serve --upstream`."
        ),
    )
    upstream_api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the upstream's API key (unset: none).",
    )
    upstreams_file: Path | None = Field(
        default=None,
        description=(
            "YAML of one upstream per model (base_url, model, api_key_env), validated at start-up: "
            "an unknown key, an unknown model or a served model without an upstream is an error. "
            "Wins over upstream_url."
        ),
    )
    gateway_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="Seconds an upstream call may take (then: fallback).",
    )
    response_cache_tenants: list[str] = Field(
        default_factory=list,
        description=(
            "Tenants whose gateway answers are cached and served again to similar prompts, JSON: "
            '["acme"] (serving/response_cache.py: in memory, per tenant, the similarity '
            "threshold learned from feedback). Empty: the cache is off."
        ),
    )
    response_cache_ttl_s: float = Field(
        default=3600.0, gt=0, description="Seconds a cached answer may be served."
    )
    response_cache_max_entries: int = Field(
        default=1000,
        ge=1,
        description="Answers cached per tenant and worker (the least recently used go first).",
    )
    response_cache_shared: bool = Field(
        default=False,
        description=(
            "With serving_shared_state=redis: every worker and replica serves the answers any of "
            "them cached and learns its thresholds from all their feedback (the answers are then "
            "kept in Redis too, up to the TTL and max entries per tenant). False: each worker "
            "serves its own answers and learns from the feedback it receives."
        ),
    )
    serving_budget_pacing: bool = Field(
        default=True,
        description=(
            "Pace each budget along the tenant's forecast traffic by scaling its willingness to "
            "pay (serving/pacing.py); off: the budget is only a hard cap (402 once spent)."
        ),
    )
    serving_tenant_budgets: dict[str, float] = Field(
        default_factory=dict,
        description='Daily budget per tenant in USD, JSON: {"acme": 5.0}; wins over the default.',
    )
    serving_sync_log_s: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Several workers: seconds between reads of the shared event log to learn the "
            "feedback other workers stored (0: off, the single-worker default)."
        ),
    )
    serving_shared_state: Literal["local", "redis"] = Field(
        default="local",
        description=(
            "Where budgets, circuit breakers, rate limits and conversation affinity live: "
            "'local' (each worker process its own, the embedded profile) or 'redis' (redis_url, "
            "shared by every worker and replica: a tenant's budget is reserved atomically; "
            "Redis down: each worker falls back to its own state, warns, and /readyz says "
            "degraded)."
        ),
    )
    serving_shared_state_prefix: str = Field(
        default="llmopt:serving:",
        min_length=1,
        description=(
            "Prefix of serving's shared-state keys in Redis: two deployments on one Redis "
            "database keep apart budgets, breakers and rate limits with different prefixes."
        ),
    )
    serving_affinity_ttl_s: float = Field(
        default=86_400.0,
        gt=0,
        description=(
            "Seconds after its last turn at which the gateway forgets a conversation's model "
            "(llmopt.conversation); with serving_shared_state='redis' the key's expiry in "
            "Redis, shared by every worker and replica, else each worker's own map."
        ),
    )
    serving_features: Literal["off", "embedded", "production"] = Field(
        default="embedded",
        description=(
            "Online features on the decision path: 'embedded' (Feast repo under home, SQLite "
            "online store), 'production' (feature_repo/production: Redis + PostgreSQL) or 'off'."
        ),
    )
    serving_features_budget_ms: float = Field(
        default=3.0, gt=0, description="Longest a decision waits for the online store (ms)."
    )
    serving_features_ttl_s: float = Field(
        default=1.0,
        gt=0,
        description="Age at which cached online features are read again (their staleness bound).",
    )
    serving_push_features: bool = Field(
        default=True,
        description=(
            "Serving pushes the event log's new feedback to the online store every "
            "serving_features_push_s (false: leave it to the pipelines' materialisation flow)."
        ),
    )
    serving_features_push_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds between pushes of new feedback to the online store (each push costs "
            "30-60 ms of CPU for ~100 feedback)."
        ),
    )
    serving_push_process: bool = Field(
        default=True,
        description=(
            "Push from a child process (python -m serving.feature_push, at a lower CPU "
            "priority), so decisions never wait behind a push for the interpreter lock; false: "
            "from a thread of the serving process."
        ),
    )
    serving_tuning_process: bool = Field(
        default=True,
        description=(
            "Parameter tuning's TPE work (a suggestion and the best per pair after feedback) "
            "in a child process (python -m serving.tuning_process, at a lower CPU priority), so "
            "decisions never wait behind it for the interpreter lock; false: on the "
            "tuning-refresh thread."
        ),
    )
    serving_spool: bool = Field(
        default=True,
        description=(
            "Serving keeps decisions and feedback in a durable local spool (home/spool) while "
            "the event log's database is down, and replays them when it returns."
        ),
    )
    serving_group_commit: bool = Field(
        default=True,
        description=(
            "Serving writes decisions through one writer thread that commits whatever is queued "
            "in one transaction (group commit); each request still waits for its own commit "
            "before it answers. Off: one transaction per decision."
        ),
    )
    serving_wal_checkpoint_s: float = Field(
        default=0.5,
        ge=0,
        description=(
            "Embedded profile (a SQLite event log): seconds between checkpoints of its "
            "write-ahead log on a thread of their own, so no commit, and no answer waiting for "
            "one, runs SQLite's checkpoint (0: SQLite's own, inside the commit that crosses "
            "1,000 pages of log)."
        ),
    )
    serving_fast_path: bool = Field(
        default=True,
        description=(
            "POST /decide, /decide_batch and /feedback are answered by an ASGI handler in front of "
            "BentoML's request machinery (serving.fast_path): the same validation, guards, "
            "errors and response, about a third less CPU per request. Off: through BentoML."
        ),
    )
    serving_switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description=(
            "How often (ms) the serving process's threads hand the GIL over "
            "(sys.setswitchinterval; Python's default is 5). The event loop shares it with the "
            "group-commit writer and the background refreshes: 0.5 ms measured +11% /decide "
            "throughput (make bench-serving)."
        ),
    )
    serving_tuning_cpu_share: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description=(
            "Most of one core the serving process spends on tuning generation parameters "
            "(TPE's next suggestion and the smoothed best per task type x model, 5-22 ms of "
            "CPU each), on a background thread: off the feedback path, where it held the "
            "router's lock and every decision waited behind it. The thread still shares the "
            "GIL with requests: at 500 decide/s + 20 feedback/s the 2-minute soak's p99 was "
            "6.3-6.9 ms at 0.1 and 5.7-5.9 ms at 0.02-0.05."
        ),
    )
    serving_drift_watch: bool = Field(
        default=True,
        description=(
            "Streaming drift detectors (ADWIN, Page-Hinkley, CUSUM, z-score, IQR) on each "
            "model's reward, quality, latency and cost in serving; on drift: alert, discount "
            "the model in the policy, run the retraining deployment (retrain_deployment)."
        ),
    )
    store_prompt_tenants: list[str] = Field(
        default_factory=list,
        description=(
            'Tenants that opted in to storing prompt text in the event log, JSON: ["acme"]; '
            "every other prompt is kept as its SHA-256 and its features only."
        ),
    )
    warm_start_evals: Path | None = Field(
        default=None,
        description=(
            "Routing-format evaluation file (every model answered each prompt) the nightly flow "
            "warm-starts the policy on before the event log (unset: the event log only)."
        ),
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="URL that drift alerts are POSTed to as JSON (unset: structured logs only).",
    )
    # Drift -> retraining (monitoring/retraining.py): serving's detectors and the drift flow.
    retrain_deployment: str = Field(
        default="nightly-training/nightly-training",
        description=(
            "Prefect deployment ('flow name/deployment name') that a drift alarm in serving or "
            "a drifted drift report runs through Prefect's API (needs PREFECT_API_URL); empty: "
            "alert only."
        ),
    )
    retrain_cooldown_s: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "Seconds after a retraining request during which further drift alarms and reports "
            "create no new run (per process, and checked against the deployment's runs in "
            "Prefect)."
        ),
    )
    autopilot: AutopilotRules = Field(
        default_factory=AutopilotRules,
        description=(
            "The closed loop's rules (challenger traffic, promotion by mSPRT, SLO rollback); "
            "LLMOPT_AUTOPILOT__<FIELD>, see AutopilotRules."
        ),
    )

    @property
    def event_log_url(self) -> str:
        """The event log's SQLAlchemy URL (SQLite under ``home`` unless ``database_url`` is set)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'events.db').resolve()}"

    @property
    def policy_state_path(self) -> Path:
        """Where the CLI keeps the embedded profile's live policy between commands."""
        return self.home / "policy.pkl"

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking URI (SQLite under ``home`` unless ``mlflow_tracking_uri`` is set)."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts(self) -> str:
        """Artifact root of the experiments the pipelines create (a URI)."""
        if self.mlflow_artifacts_uri:
            return self.mlflow_artifacts_uri
        return (self.home / "mlartifacts").resolve().as_uri()

    @property
    def optuna_storage(self) -> str:
        """Optuna storage URL of the HPO study (SQLite under ``home`` unless set)."""
        if self.optuna_storage_url:
            return self.optuna_storage_url
        return f"sqlite:///{(self.home / 'optuna.db').resolve()}"

    @property
    def prefect_home_path(self) -> Path:
        """PREFECT_HOME used by ``llmopt flows`` (``home/prefect`` unless set)."""
        return self.prefect_home if self.prefect_home is not None else self.home / "prefect"

    def ensure_home(self) -> Path:
        """Create the state directory if needed and return it."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (tests build their own ``Settings`` instead)."""
    return Settings()
