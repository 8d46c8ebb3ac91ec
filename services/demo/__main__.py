from services.demo.service import main
from services.launch import run_until_signalled

raise SystemExit(run_until_signalled(main))
