"""nitp_eval: geometry, lm-eval and MTEB evaluation of NTP/NITP checkpoints, and paper-style reports."""
