import sys

from diffusion_handles.cli import main

sys.exit(main())
