// Builds the shared precompiled header (tests/pch.hpp).
