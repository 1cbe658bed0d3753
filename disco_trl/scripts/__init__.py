"""Runnable scripts shipped with the package (`disco-trl train` runs `disco_trl.scripts.train`)."""
