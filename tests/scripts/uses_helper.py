# Imports a module that sits next to it, and one from the source directory.
import helper_next_to_script
import helper_in_source_dir


def run(data):
    return [helper_next_to_script.NAME, helper_in_source_dir.NAME]
