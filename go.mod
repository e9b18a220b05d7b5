module github.com/ftpguard/ftpguard

go 1.26.8

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/jlaffaye/ftp v0.2.4
	go.uber.org/goleak v1.3.0
	golang.org/x/time v0.16.0
)
