"""Answers with the process id that ran run(), so a test can tell which server answered."""

import os


def init():
    pass


def run(data):
    return {"pid": os.getpid(), "parent": os.getppid()}
