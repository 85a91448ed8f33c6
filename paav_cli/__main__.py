from paav_cli.cli import main

main()
