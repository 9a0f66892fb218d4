from folovllm.cli import main

main()
