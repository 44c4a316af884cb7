"""Organising conversations (issue 12): spaces per therapist, archive, find, mute, video."""
