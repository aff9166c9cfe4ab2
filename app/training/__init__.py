"""Expert training, pilot building and evaluation (offline; never imports the HTTP layer)."""
