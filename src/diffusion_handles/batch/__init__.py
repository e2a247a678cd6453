"""``handles batch``: many edits from a JSONL file, scheduled by Ray.

* :mod:`~diffusion_handles.batch.jobs`: reading and validating the JSONL (one edit per line);
* :mod:`~diffusion_handles.batch.execute`: the Ray tasks and the driver loop (resume, progress,
  failures recorded per job), also used by ``handles bench --ray``; each job runs through the
  ``handles edit`` runner the CLI passes in (this package never imports the CLI);
* :mod:`~diffusion_handles.batch.report`: ``batch.json``, the summary table and ``report.html``.

Ray is imported only when a batch runs, so ``handles --help`` stays fast.
"""
