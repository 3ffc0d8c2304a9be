#!/usr/bin/env perl
# A plain REQ client in Perl (ZMQ::FFI): once a second sends the current date and time,
# and prints the reply with its process id. Lazy Pirate: with no reply within the timeout
# it closes the socket, opens a new one and sends again.
#
#   perl date_client.pl [--connect tcp://localhost:5559] [--count N] [--interval-ms 1000]
use strict;
use warnings;
use Getopt::Long;
use POSIX qw(strftime);
use Time::HiRes qw(time usleep);
use ZMQ::FFI qw(ZMQ_REQ);

my ($connect, $count, $interval_ms, $timeout_ms, $retries) =
    ('tcp://localhost:5559', 0, 1000, 2500, 10);
GetOptions(
    'connect=s'     => \$connect,
    'count=i'       => \$count,
    'interval-ms=i' => \$interval_ms,
    'timeout-ms=i'  => \$timeout_ms,
    'retries=i'     => \$retries,
) or die "usage: $0 [--connect ENDPOINT] [--count N] [--interval-ms MS]\n";
$| = 1;

my $ctx = ZMQ::FFI->new();
my $sock;
my $sent = 0;

sub fresh_socket {
    my $s = $ctx->socket(ZMQ_REQ);
    $s->set_linger(0);
    $s->connect($connect);
    return $s;
}

# Waits for a reply until the deadline; undef on timeout.
sub reply_within {
    my ($s, $ms) = @_;
    my $deadline = time() + $ms / 1000;
    until ($s->has_pollin) {
        return undef if time() >= $deadline;
        usleep(2000);
    }
    return join '', $s->recv_multipart();
}

while ($count == 0 || $sent < $count) {
    my $now = time();
    my $text = strftime('%Y-%m-%d %H:%M:%S', localtime $now)
        . sprintf('.%06d #%d', ($now - int $now) * 1e6, $sent);
    my $reply;
    for my $attempt (0 .. $retries) {
        $sock //= fresh_socket();
        $sock->send($text);
        $reply = reply_within($sock, $timeout_ms);
        last if defined $reply;
        print STDERR "perl $$ no reply, retrying\n";
        $sock->close();
        undef $sock;
    }
    defined $reply or die "perl $$ giving up: no server\n";
    print "perl $$ sent $text got $reply\n";
    $sent++;
    usleep($interval_ms * 1000) if $count == 0 || $sent < $count;
}
