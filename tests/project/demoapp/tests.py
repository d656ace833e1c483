"""Tests that Django's test runner runs in the test project (several classes, so
that --parallel 2 really clones the test database)."""

from __future__ import annotations

from django.db import connection
from django.test import TestCase, TransactionTestCase

from .models import Note


class NotesTests(TestCase):
    def test_create(self) -> None:
        Note.objects.create(text="a")
        self.assertEqual(Note.objects.count(), 1)

    def test_empty(self) -> None:
        self.assertEqual(Note.objects.count(), 0)


class ConnectionTests(TransactionTestCase):
    def test_runs_on_a_test_database(self) -> None:
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))

    def test_password_is_still_the_source(self) -> None:
        self.assertNotIsInstance(connection.settings_dict["PASSWORD"], str)


class MoreTests(TestCase):
    def test_bulk(self) -> None:
        Note.objects.bulk_create([Note(text=str(i)) for i in range(10)])
        self.assertEqual(Note.objects.count(), 10)
