from services.launch import run_until_signalled
from services.demo.service import main

raise SystemExit(run_until_signalled(main))
