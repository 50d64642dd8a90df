"""Face embedders (by registry name) and the embed stage that stores one vector per face."""
