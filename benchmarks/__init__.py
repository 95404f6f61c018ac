"""The benchmark harness: `sdrt bench` (command.py) runs every engine, sdrt's and its peers', in
its own worker process (sdrt_worker.py, peer_worker.py) and writes JSON lines, a Markdown report
and plots (report.py). `python -m sdrt.benchmarks.unet_step` times one UNet call alone."""
