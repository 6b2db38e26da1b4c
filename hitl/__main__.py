from hitl.cli import main

main()
