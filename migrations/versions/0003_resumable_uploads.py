"""resumable uploads (tus)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('resumable_uploads',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('upload_id', sa.String(length=32), nullable=False),
    sa.Column('upload_length', sa.BigInteger(), nullable=True),
    sa.Column('upload_offset', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('upload_metadata', sa.Text(), nullable=True),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=255), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('max_downloads', sa.Integer(), nullable=True),
    sa.Column('expires_in', sa.BigInteger(), nullable=True),
    sa.Column('filehash', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resumable_uploads')),
    sa.UniqueConstraint('filehash', name=op.f('uq_resumable_uploads_filehash')),
    sa.UniqueConstraint('upload_id', name=op.f('uq_resumable_uploads_upload_id'))
    )
    with op.batch_alter_table('resumable_uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resumable_uploads_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_resumable_uploads_status'), ['status'], unique=False)


def downgrade():
    with op.batch_alter_table('resumable_uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resumable_uploads_status'))
        batch_op.drop_index(batch_op.f('ix_resumable_uploads_expires_at'))

    op.drop_table('resumable_uploads')
