//! Streams the server can serve on, split into owned halves for the reader and writer tasks.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A stream that splits into independently owned read and write halves.
pub trait SplitStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split_owned(self) -> (Self::Read, Self::Write);
}

/// A TCP or Unix stream.
pub enum AnyStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Read half of an [`AnyStream`].
pub enum AnyRead {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// Write half of an [`AnyStream`].
pub enum AnyWrite {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

macro_rules! delegate_read {
    ($t:ty, $($v:ident),+) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => std::pin::Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($v:ident),+) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => std::pin::Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => std::pin::Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => std::pin::Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(AnyStream, Tcp, Unix);
delegate_write!(AnyStream, Tcp, Unix);
delegate_read!(AnyRead, Tcp, Unix);
delegate_write!(AnyWrite, Tcp, Unix);

impl SplitStream for AnyStream {
    type Read = AnyRead;
    type Write = AnyWrite;
    fn split_owned(self) -> (AnyRead, AnyWrite) {
        match self {
            AnyStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (AnyRead::Tcp(r), AnyWrite::Tcp(w))
            }
            AnyStream::Unix(s) => {
                let (r, w) = s.into_split();
                (AnyRead::Unix(r), AnyWrite::Unix(w))
            }
        }
    }
}

impl SplitStream for TcpStream {
    type Read = tcp::OwnedReadHalf;
    type Write = tcp::OwnedWriteHalf;
    fn split_owned(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}
