"""The supervisor: an interpreter-pinned task scheduler (HTTP API, SQLite state, ZeroMQ dispatch)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
