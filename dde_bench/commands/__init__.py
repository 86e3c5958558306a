"""Commands that wire several areas of the library: run (trainer + harness + report), cache (trainer + harness)."""
