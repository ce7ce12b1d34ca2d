"""Batched MD of several Li-Sn / Li-In cells at three temperatures in one run, then Li diffusion and an Arrhenius fit.

Same run from the command line: write the cells (below) and `limace md examples/md_nvt.yaml`, then
`limace diffusion md-out`.
"""
import limace.potentials
from limace.data import get_structure
from limace.analysis.diffusion import ArrheniusFit, analyze_run, save_plots
from limace.md.runner import run_md

cells = [get_structure(p).repeat((2, 2, 1)) for p in ("Li13Sn5", "Li13Sn5", "Li13Sn5")]
model = limace.potentials.load_batched("limace-lisnin-small", device="cpu", dtype="float32")  # or a .model path
result = run_md(cells, model, output_dir="md-out", ensemble="nvt_langevin", steps=20000, timestep_fs=2.0,
                temperature_K=[600, 700, 800], trajectory_every=50, log_every=100, checkpoint_every=2000)
print(result.as_dict())
runs = analyze_run("md-out", species=["Li"])
fit = ArrheniusFit.from_analyses(runs, species="Li")
print(fit.summary())
save_plots(runs, "md-out", arrhenius=fit)  # msd.png, arrhenius.png
