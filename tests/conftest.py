"""Shared pytest setup: quiet TF logs, make the repo importable, and reap TFF workers."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tff_backdoor  # noqa: E402,F401  (registers TFF worker cleanup at exit)
