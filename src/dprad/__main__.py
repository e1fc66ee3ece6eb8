from dprad.cli import main

main()
