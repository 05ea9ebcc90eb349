module corelay.dev/backend

go 1.19
