"""The HTTP API's request and response bodies (FastAPI builds the OpenAPI schema from them).

No ``from __future__ import annotations``: FastAPI resolves these annotations at run time."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "examples": [{"smiles": ["CCO", "c1ccccc1"]}, {"smiles": ["CCO"], "modalities": ["ecfp"], "return": ["gates"]}]
    })

    smiles: list[str] = Field(..., min_length=1, description="SMILES strings, answered in order")
    modalities: list[str] | None = Field(None, min_length=1, description="subset of the model's modalities to "
                                         "use (default: all)")
    return_: list[Literal["gates", "reconstructions"]] = Field(
        default_factory=list, alias="return", description="extras per item: intra-modal gates of the modalities "
        "used, and/or every modality reconstructed from the fused vector (raw input space)"
    )


class ReconstructRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"smiles": ["CCO"], "hide": ["ecfp"]}]})

    smiles: list[str] = Field(..., min_length=1, description="SMILES strings, answered in order")
    hide: list[str] = Field(..., min_length=1, description="modalities withheld from the model and reconstructed")
    modalities: list[str] | None = Field(None, min_length=1, description="visible modalities (default: all not hidden)")


class EmbedItem(BaseModel):
    input: str
    mol_id: str | None = None
    smiles: str | None = Field(None, description="canonical SMILES")
    embedding: list[float] | None = None
    attention: dict[str, float] | None = Field(None, description="inter-modal attention per modality (0 if unused)")
    modalities: list[str] | None = Field(None, description="modalities that were present and used")
    modality_errors: dict[str, str] | None = Field(None, description="why a requested modality is missing from "
                                                   "`modalities`: its encoder's reason, per modality ({} if none)")
    gates: dict[str, list[float]] | None = None
    reconstructions: dict[str, list[float]] | None = None
    error: str | None = Field(..., description="null, or why this item has no embedding")


class EmbedResponse(BaseModel):
    results: list[EmbedItem]


class HiddenModality(BaseModel):
    reconstruction: list[float] = Field(..., description="raw input space")
    cosine: float | None = Field(..., description="cosine to the true embedding (null if it could not be computed)")
    cosine_standardized: float | None = Field(..., description="same after the model's (x - mean) / std")
    error: str | None = None


class ReconstructItem(EmbedItem):
    hidden: dict[str, HiddenModality] | None = None


class ReconstructResponse(BaseModel):
    results: list[ReconstructItem]


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_dir: str
    modalities: list[str]
    dims: dict[str, int]
    latent_dim: int
    encoders: dict[str, dict[str, Any]] = Field(..., description="encoder spec per modality")
    versions: dict[str, Any]
    training: dict[str, Any]
    metrics: Any
    weights_sha256: str | None
    service: dict[str, Any]


ERROR_RESPONSES = {
    400: {"description": "malformed JSON"},
    413: {"description": "more SMILES than max_smiles_per_request, or a body larger than "
                         "max_smiles_per_request x (2 x max_smiles_length + 16) + 65536 bytes"},
    422: {"description": "invalid request (the detail names the field, index or value), or no valid SMILES"},
    503: {"description": "a backend replica died and retries were used up, or a backend queue is full"},
    504: {"description": "not answered within request_timeout_s"},
}
