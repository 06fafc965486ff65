"""Measurements a user runs on their own machine (`vtcr bench <name>`): what optical memory costs
and saves, and how readable its pages stay. Each benchmark is a library module with a frozen config
and one `run_*` function; `vtcr/commands/bench_<name>.py` only parses flags and prints.

    efficiency   replay real traces through a real architecture in every mode: prefill, decode,
                 KV-cache and memory per mode and batch size, beside an analytic cost model
    fidelity     read rendered pages back with an independent OCR engine: the compression-fidelity
                 frontier, and a search for the densest readable render config
"""
