"""One recipe per stage: parse config -> build -> run -> save, teardown in `finally`."""
