"""``make dashboard``: the W&B workspace as code (PyPI's wandb-workspaces), one
section per finding.  Built offline; saved to W&B only when the user is online
and names an entity, otherwise its definition is written to a JSON file.

Every key a panel plots is one the harness logs: per-step keys from
DistillModule (``gen/...``, losses, grad norms), evaluation keys as
``eval/<metric>`` from EvalCallback, media under ``media/...``, and the final
metrics as the ``final`` table (see eval/wandb_media.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from ddmd_lab.util.io import atomic_write_text

# Lightning's WandbLogger logs every value against this key; the module passes its own step
# count (critic steps) as the logging step, so it means the same on every curve.
STEP_KEY = "trainer/global_step"
SECTIONS: dict[str, dict] = {
    "Variance curves by arm (CA-only collapses, DM stabilises)": {
        "lines": ["eval/out_std", "eval/out_mean", "eval/saturated", "eval/hf_excess", "eval/spectral_centroid"]},
    "FID and class adherence by arm": {
        "lines": ["eval/class_adherence", "eval/domain_fd"], "bars": ["fid", "class_adherence"]},
    "Losses and update norms": {
        "lines": ["loss_generator", "loss_critic", "gen/update_norm_ca", "gen/update_norm_dm", "gen/normaliser_ca",
                  "gen/normaliser_dm", "gen/tau_ca_mean", "gen/tau_dm_mean", "grad_norm_generator", "grad_norm_fake"]},
    # the users' complaint about Decoupled DMD: oversaturated, yellowed images -- measured against the teacher's samples
    # of the same prompts and noise (text-to-image) or against real test images (the grey image scales)
    "Colour and contrast vs the teacher (oversaturation, colour cast)": {
        "only": "text-to-image",
        "lines": ["eval/hsv_saturation_vs_teacher", "eval/lab_b_vs_teacher", "eval/lab_a_vs_teacher",
                  "eval/rms_contrast_vs_teacher", "eval/clipped_vs_teacher", "eval/hsv_saturation", "eval/lab_b"],
        "bars": ["hsv_saturation_vs_teacher", "lab_b_vs_teacher"]},
    "Contrast and clipping vs real images": {
        "only": "image", "lines": ["eval/rms_contrast_vs_real", "eval/clipped_vs_real", "eval/rms_contrast", "eval/clipped"]},
    # diagnostics (eval/diagnostics_callback.py): batch means here; per tau bin under diag_bins/ and in diagnostics.csv
    "Why a schedule wins or loses: CA vs DM (diagnostics)": {
        "lines": ["diag/cos_ca_dm_own", "diag/cos_ca_dm_shared", "diag/ratio_ca_dm", "diag/ratio_ca_dm_shared",
                  "diag/share_ca", "diag/share_dm", "diag/normaliser_ca", "diag/normaliser_dm"]},
    "CA and DM spectra by tau": {"media": ["media/term_spectra", "media/output_spectra"]},
    "Sample grids over training": {"media": ["media/samples"]},
}


def build_workspace(entity: str, project: str = "ddmd_lab", name: str = "ddmd_lab findings"):
    # only make dashboard builds a workspace: wandb_workspaces (and the wandb it pulls in) waits until then
    import wandb_workspaces.reports.v2 as wr  # deferred: wandb
    import wandb_workspaces.workspaces as ws  # deferred: wandb

    sections = []
    for title, spec in SECTIONS.items():
        panels = [wr.LinePlot(title=key, x=STEP_KEY, y=[key], groupby="Group", groupby_aggfunc="mean")
                  for key in spec.get("lines", [])]
        panels += [wr.BarPlot(title=f"final {key}", metrics=[f"final_{key}"], groupby="Group")
                   for key in spec.get("bars", [])]
        if spec.get("media"):
            panels.append(wr.MediaBrowser(title=title, media_keys=spec["media"], mode="gallery", gallery_axis="step"))
        sections.append(ws.Section(name=title, panels=panels, is_open=True))
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections,
                        settings=ws.WorkspaceSettings(x_axis=STEP_KEY))


def workspace_spec(workspace) -> dict:
    """The view W&B would store, built without the network."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


def panel_keys(kind: str | None = None) -> set[str]:
    """Every logged key the workspace reads (for the test that they are all logged); with ``kind``
    ("image" or "text-to-image"), those of the sections meant for that kind of scale (and for all)."""
    keys = set()
    for spec in SECTIONS.values():
        if kind is not None and spec.get("only", kind) != kind:
            continue
        keys |= set(spec.get("lines", [])) | set(spec.get("media", [])) | {f"final_{k}" for k in spec.get("bars", [])}
    return keys


def make_dashboard(entity: str | None, project: str, out: Path, online: bool) -> str:
    workspace = build_workspace(entity or "offline", project)
    if online and entity:
        workspace.save()
        return f"workspace saved: {workspace.url}"
    atomic_write_text(Path(out), json.dumps(workspace_spec(workspace), indent=1))
    return (f"workspace definition written to {out} (offline). To publish it: "
            f"`WANDB_MODE=online make dashboard WANDB_ENTITY=<you>` after `wandb sync runs/*/*/*/wandb/offline-run-*`.")
