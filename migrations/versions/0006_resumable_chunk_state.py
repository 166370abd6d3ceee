"""resumable uploads: the chunk storage's bookkeeping (S3 multipart parts, hash state)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('resumable_uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chunk_state', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('resumable_uploads', schema=None) as batch_op:
        batch_op.drop_column('chunk_state')
