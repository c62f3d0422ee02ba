"""Typed arguments of the Serve app (the builder's input; every field is settable from
serve_configs/fusion.yaml, and ``dmf serve`` makes a flag of each from its ``description``)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dmf_ray.files import absolute


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingArgs(_Args):
    """Serve's request-based autoscaling for one deployment (passed as its autoscaling_config)."""

    min_replicas: int = Field(1, ge=0, description="replicas kept at all times (0 allows scale to zero)")
    max_replicas: int = Field(4, ge=1, description="upper bound; the cluster must fit them (or autoscale nodes)")
    initial_replicas: int | None = Field(None, ge=0, description="replicas at deploy time; default min_replicas")
    target_ongoing_requests: float = Field(2.0, gt=0, description="ongoing + queued requests per replica to aim for")
    upscale_delay_s: float = Field(10.0, ge=0, description="how long demand must stay high before adding replicas")
    downscale_delay_s: float = Field(120.0, ge=0, description="how long demand must stay low before removing replicas")
    look_back_period_s: float = Field(
        15.0, gt=0, description="window the request metrics are averaged over (keep it > metrics_interval_s)"
    )
    metrics_interval_s: float | None = Field(
        None, gt=0, description="how often handles push metrics (Ray default 10 s; deprecated in Ray but the only "
        "per-deployment knob; set it below look_back_period_s for fast reactions, e.g. in tests)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingArgs":
        problems = []
        if self.max_replicas < self.min_replicas:
            problems.append(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            problems.append(f"initial_replicas ({self.initial_replicas}) is outside [min_replicas, max_replicas]")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DeploymentArgs(_Args):
    """Resources, concurrency and scaling of one deployment."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per replica; for GPU encoders None means the encoder spec's num_gpus"
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica holds at once (running + waiting in its batch queue); keep it "
        "well above what one batch takes: when every replica is full, callers retry with back-off (up to 0.5 s)"
    )
    max_queued_requests: int = Field(-1, ge=-1, description="requests queued in callers before 503; -1 = unbounded")
    autoscaling: AutoscalingArgs | None = Field(
        default_factory=AutoscalingArgs, description="autoscaling_config; null pins num_replicas"
    )
    num_replicas: int = Field(1, ge=1, description="fixed replica count, used only when autoscaling is null")
    health_check_period_s: float = Field(
        10.0, gt=0, description="how often Serve calls check_health; also how soon a dead replica is noticed and "
        "replaced (Serve finds a killed replica at its next health check)"
    )
    health_check_timeout_s: float = Field(
        30.0, gt=0, description="check_health slower than this marks the replica sick"
    )

    @model_validator(mode="after")
    def _can_scale(self) -> "DeploymentArgs":
        # Serve never scales up when a replica cannot hold more than the target (ray-2.60 notes).
        a = self.autoscaling
        if a is not None and a.max_replicas > a.min_replicas and self.max_ongoing_requests <= a.target_ongoing_requests:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must exceed autoscaling.target_ongoing_requests "
                f"({a.target_ongoing_requests}), otherwise Serve never scales up"
            )
        return self


class BatchedDeploymentArgs(DeploymentArgs):
    """A deployment whose main method is a @serve.batch: requests queued together run as one."""

    max_batch_molecules: int = Field(512, ge=1, description="molecules in one batch (summed over requests)")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="how long a batch waits to fill after its first request; 0 = take what is queued "
        "(requests still batch under load, and a lone request pays no wait)"
    )


# Per-role defaults. A role given in the args is merged over these field by field (autoscaling
# too), so `encoders: {num_cpus: 2}` changes the CPUs and keeps everything else.
ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Two ingress replicas at all times: when one dies the proxy routes to the other at once,
    # and a 2 s health check replaces the dead one (Serve notices a dead replica at its next check).
    "ingress": {"num_cpus": 0.25, "max_ongoing_requests": 128, "health_check_period_s": 2.0,
                "autoscaling": {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 32}},
    "encoders": {"num_cpus": 1.0, "max_ongoing_requests": 64, "max_batch_molecules": 512,
                 "autoscaling": {"max_replicas": 4, "target_ongoing_requests": 2}},
    "gpu_encoders": {"num_cpus": 1.0, "max_ongoing_requests": 64, "max_batch_molecules": 512,
                     "batch_wait_timeout_s": 0.005, "autoscaling": {"max_replicas": 2, "target_ongoing_requests": 8}},
    "fusion": {"num_cpus": 0.5, "num_gpus": 0.0, "max_ongoing_requests": 128, "max_batch_molecules": 4096,
               "autoscaling": {"max_replicas": 2, "target_ongoing_requests": 16}},
}


def _merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


class ServeArgs(_Args):
    """Everything the app is built from. ``import_path: dmf_ray.pipelines.serve:build_app`` + ``args:``."""

    model_dir: str = Field(..., description="trained model directory (config.json + model.safetensors): a "
                           "path every node reads, or a URI (s3://, gs://) each replica fetches once per node")
    max_smiles_per_request: int = Field(256, ge=1, description="more SMILES than this in one request -> 413")
    max_smiles_length: int = Field(2000, ge=1, description="a SMILES longer than this -> 422 naming its index")
    max_heavy_atoms: int = Field(
        100, ge=1, description="a molecule with more heavy atoms than this -> 422 naming its index, its size and "
        "the limit; bounds the encoder work one molecule can ask for (rdkit2d grows ~N^2.5: ~20 ms at 100 "
        "heavy atoms, ~0.4 s at 400 on one core)"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered in this time -> 504")
    handle_retries: int = Field(2, ge=0, description="retries of a backend call whose replica died mid-request")
    encode_step_atoms: int = Field(
        200, ge=1, description="heavy atoms a CPU encoder replica takes per step, shared fairly between the "
        "requests waiting (at least one molecule each): a small request waits for at most one step of a large one "
        "(~2 molecules of 100 heavy atoms, ~50 ms with rdkit2d on one core)"
    )
    neural_step_atoms: int = Field(
        800, ge=1, description="heavy atoms a neural encoder (chemnet, chemprop, hf) run on the CPU takes per step, "
        "in one call over every waiting request's share: its cost is mostly per call, so small steps waste it "
        "(ChemNet, 2 cores, 4 clients x 256 molecules: 137 mol/s at 200, 235 at 800; one step ~0.1 s)"
    )
    access_log: bool = Field(False, description="Serve's per-request access log lines (proxy and replicas)")
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray that `dmf serve` starts (default: all); ignored when "
        "attaching to a cluster (RAY_ADDRESS)"
    )
    cap_replicas: bool | None = Field(
        None, description="lower each deployment's max_replicas to what the cluster can place, keeping one ingress "
        "replica's resources free for its replacement; null = only on a single-node cluster (a local Ray). Set "
        "false on a cluster whose autoscaler adds nodes for pending replicas"
    )
    separate_fusion: bool = Field(
        False, description="run the fusion model in its own FusionModel deployment (to give it a GPU or scale it "
        "apart from the HTTP edge) instead of inside the ingress; costs one more handle hop per request"
    )
    ingress: DeploymentArgs = Field(description="the HTTP edge (and the fusion model unless separate_fusion)")
    encoders: BatchedDeploymentArgs = Field(description="the deployment of all CPU encoders")
    gpu_encoders: BatchedDeploymentArgs = Field(description="each GPU encoder's own deployment (num_gpus null = "
                                                "the encoder spec's)")
    fusion: BatchedDeploymentArgs = Field(description="batching of the fusion model; its resources and scaling "
                                          "apply only with separate_fusion")

    @model_validator(mode="before")
    @classmethod
    def _over_role_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for role, defaults in ROLE_DEFAULTS.items():
                given = data.get(role)
                if given is None or isinstance(given, dict):
                    data[role] = _merged(defaults, given or {})
        return data

    @field_validator("model_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Replicas may not share the builder's working directory; URIs stay as they are.
        return absolute(v)

    @model_validator(mode="after")
    def _consistent(self) -> "ServeArgs":
        problems = []
        # @serve.batch fails a request larger than the batch, so a full request must fit.
        for name in ("encoders", "gpu_encoders", "fusion"):
            size = getattr(self, name).max_batch_molecules
            if size < self.max_smiles_per_request:
                problems.append(f"{name}.max_batch_molecules ({size}) must be >= max_smiles_per_request "
                                f"({self.max_smiles_per_request})")
        if self.ingress.num_gpus:
            problems.append("ingress.num_gpus must be 0: to run the fusion model on a GPU set separate_fusion: true "
                            "and fusion.num_gpus")
        if (self.fusion.num_gpus or 0) > 0 and not self.separate_fusion:
            problems.append("fusion.num_gpus needs separate_fusion: true (the ingress runs on CPU)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
