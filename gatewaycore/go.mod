module tgipool.io/gatewaycore

go 1.26
