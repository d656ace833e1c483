"""Test databases for MySQL: the clone for ``test --parallel`` with the current credential."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from django.db.backends.mysql import creation


class DatabaseCreation(creation.DatabaseCreation):
    def _clone_db(self, source_database_name: str, target_database_name: str) -> None:
        # Django's version calls its own DatabaseClient with the raw settings
        # (a source object for PASSWORD); this one resolves them first.
        wrapper: Any = self.connection
        settings_dict = wrapper.iamdb.resolved_settings()
        cmd_args, cmd_env = wrapper.client.settings_to_cmd_args_env(settings_dict, [])
        dump_cmd = ["mysqldump", *cmd_args[1:-1], "--routines", "--events", source_database_name]
        load_cmd = [*cmd_args[:-1], target_database_name]
        env = {**os.environ, **cmd_env} if cmd_env else None
        with subprocess.Popen(dump_cmd, stdout=subprocess.PIPE, env=env) as dump_proc:
            assert dump_proc.stdout is not None
            with subprocess.Popen(
                load_cmd, stdin=dump_proc.stdout, stdout=subprocess.DEVNULL, env=env
            ) as load_proc:
                # Let mysqldump receive SIGPIPE if the load process exits.
                dump_proc.stdout.close()
        if dump_proc.returncode or load_proc.returncode:
            raise subprocess.CalledProcessError(
                dump_proc.returncode or load_proc.returncode,
                dump_cmd if dump_proc.returncode else load_cmd,
            )
