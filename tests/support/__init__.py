"""Test support code: fakes of the outside services carepulse talks to."""
