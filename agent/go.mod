module tensorlake-emulator/agent

go 1.19
