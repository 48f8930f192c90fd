"""Scheduler agent and prompt-aware policies (see the scheduler issue)."""
