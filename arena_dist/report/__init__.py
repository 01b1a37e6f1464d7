"""`arena-dist report RUN_DIR`: one HTML page (plus PNGs) that shows what a run did and how good it is."""
