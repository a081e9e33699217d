from wasmcache.cli import main

main()
