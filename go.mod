module github.com/ftpguard/ftpguard

go 1.26.8

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/jlaffaye/ftp v0.2.4 // indirect
	github.com/pires/go-proxyproto v0.15.0 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)
