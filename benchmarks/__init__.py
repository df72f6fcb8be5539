"""Measurements behind the figures in docs/ (performance, reproducibility, hardware), each
run from the repository root as `python -m benchmarks.<name> --help`:

- throughput: training and inference images/s of vgg_jax against torchvision on one
  accelerator (its sections: jax_speed, torch_speed; its report: report; its speed
  experiments: variants), with profile_summary for where the device time goes;
- input_pipeline: input images/s per CPU core against torchvision's;
- lpips_speed: LPIPS and DISTS, forward and forward + backward, against their references;
- lpips_backward: where LPIPS's forward + backward spends its CPU time, against lpips's;
- train_memory: the peak memory of a train step and the largest batch that fits;
- tpu_plans: vgg-jax-plan on several TPU slices, as the table of docs/hardware.md;
- recipe_sweep and reproduce: the default recipe over seeds, dtypes and XLA settings, and
  every figure of docs/reproducibility.md;
- timing: the timers they share. run_on_gpu.sh is the device call for the GPU figures.
"""
